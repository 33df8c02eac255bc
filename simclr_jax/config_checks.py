"""The one error type for a config that cannot work, and the helpers every check uses.

Each part checks its own block before anything is built or compiled, with messages that
say the fix: a stage its own (`pretrain.check_config`, `linear_eval.check_config`,
`finetune.check_config`), each method (`methods/`) and backbone family (`backbones/`) its
block, and the shared blocks once each: `optim.check_config` (any optimiser block),
`data.augmentations.check_augment_config` (`config.augment`),
`precision.check_compute_dtype`. The shape of every tuple-valued field is checked here,
once, as the flags are parsed (`check_tuple_fields`).

It imports no JAX at the top, so that main.py's flag parsing (simclr_jax/cli.py) stays fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config value that cannot work."""


def require(condition: bool, message: str) -> None:
  """Raises ConfigError(message) unless `condition`."""
  if not condition:
    raise ConfigError(message)


def check_batch_size(name: str, batch_size: int) -> None:
  """The global batch must split evenly over processes and devices."""
  import jax  # pylint: disable=g-import-not-at-top

  devices, processes = jax.device_count(), jax.process_count()
  require(batch_size > 0, f"{name} must be positive, got {batch_size}.")
  require(batch_size % devices == 0,
          f"{name}={batch_size} does not divide across {devices} devices: use a multiple "
          f"of {devices}, e.g. --config.{name}={max(devices, batch_size // devices * devices)}.")
  require(batch_size % processes == 0,
          f"{name}={batch_size} does not divide across {processes} processes.")


def check_positive_ints(block, names, prefix: str = "") -> None:
  """Each of `names` in `block` is a positive integer (intervals, counts)."""
  for name in names:
    require(isinstance(block[name], int) and block[name] > 0,
            f"{prefix}{name} must be a positive integer, got {block[name]!r}.")


@dataclasses.dataclass(frozen=True)
class TupleField:
  """What a tuple-valued field holds: `what` in words, a test of the tuple, an example."""
  what: str
  accepts: Callable[[tuple], bool]
  example: str


def _numbers(count: int, example: str) -> TupleField:
  return TupleField(f"{count} numbers", lambda value: len(value) == count and all(
      isinstance(x, (int, float)) and not isinstance(x, bool) for x in value), example)


def _all(what: str, accepts: Callable[[Any], bool], example: str) -> TupleField:
  return TupleField(what, lambda value: all(accepts(x) for x in value), example)


_WIDTHS = _all("layer widths (positive integers)",
               lambda x: isinstance(x, int) and not isinstance(x, bool) and x > 0,
               "(2048, 2048, 128)")
# Every tuple-valued field, by its last name (configs/default.py's and the method blocks',
# configs/methods.py; a test holds every one of them to having an entry here).
TUPLE_FIELDS: dict[str, TupleField] = {
    "crop_area_range": _numbers(2, "(0.08, 1.0)"),
    "crop_ratio_range": _numbers(2, "(0.75, 1.33)"),
    "blur_sigma_range": _numbers(2, "(0.1, 2.0)"),
    "color_jitter": _numbers(4, "(0.4, 0.4, 0.2, 0.1)"),
    "head_widths": _WIDTHS,
    "projector_widths": _WIDTHS,
    "predictor_widths": _WIDTHS,
    "expander_widths": _WIDTHS,
    "exclude_patterns": _all("regexes (strings)", lambda x: isinstance(x, str),
                             '("^probe/",)'),
    "frozen_patterns": _all("regexes (strings)", lambda x: isinstance(x, str),
                            '("^encoder/patch_embed/",)'),
    "adam_betas": _numbers(2, "(0.9, 0.999)"),
    "learning_rate_multipliers": _all(
        "(regex, factor) pairs",
        lambda x: isinstance(x, (tuple, list)) and len(x) == 2 and isinstance(x[0], str)
        and isinstance(x[1], (int, float)) and not isinstance(x[1], bool),
        '(("^predictor/", 10.0),)'),
    "feature_splits": _all("split names (strings)", lambda x: isinstance(x, str),
                           '("train", "test")'),
}


def tuple_fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """'augment.crop_area_range' -> its value, for every field of `config` that holds a
  tuple (or list) or is a tuple placeholder (None until set)."""
  fields = {}
  for key in config:
    value, name = config[key], f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      fields.update(tuple_fields(value, f"{name}."))
    elif isinstance(value, (tuple, list)) or config.get_type(key) in (tuple, list):
      fields[name] = value
  return fields


def check_tuple_fields(config: ml_collections.ConfigDict,
                       typed: Mapping[str, str] | None = None) -> None:
  """ConfigError for a tuple-valued field (`TUPLE_FIELDS`) whose value has the wrong length
  or elements, e.g. `--config.augment.crop_area_range=0.2` (which ml_collections reads as
  the tuple (0.2,)). `typed`: field -> the text given on the command line, for the
  message."""
  typed = typed or {}
  for name, value in tuple_fields(config).items():
    field = TUPLE_FIELDS.get(name.rsplit(".", 1)[-1])
    if field is None or value is None or field.accepts(tuple(value)):
      continue
    quote = "'" if '"' in field.example else '"'  # Shell quotes around the example.
    raise ConfigError(f"config.{name} takes {field.what}, e.g. --config.{name}={quote}"
                      f"{field.example}{quote}, got {typed.get(name, tuple(value))}.")
