"""The one error type for a config that cannot work, and the helpers every check uses.

Each part checks its own block before anything is built or compiled, with messages that
say the fix: a stage its own (`pretrain.check_config`, `linear_eval.check_config`,
`finetune.check_config`), each method (`methods/`) and backbone family (`backbones/`) its
block, and the shared blocks once each: `optim.check_config` (any optimiser block),
`data.augmentations.check_augment_config` (`config.augment`),
`precision.check_compute_dtype`.
"""

from __future__ import annotations

import jax


class ConfigError(ValueError):
  """A config value that cannot work."""


def require(condition: bool, message: str) -> None:
  """Raises ConfigError(message) unless `condition`."""
  if not condition:
    raise ConfigError(message)


def check_batch_size(name: str, batch_size: int) -> None:
  """The global batch must split evenly over processes and devices."""
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
