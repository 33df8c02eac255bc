"""Checks a config before anything is built or compiled, with messages that say the fix.

The checks here are the stages' own; each method (`methods/`) and backbone family
(`backbones/`) checks its own block, with `require`.
"""

from __future__ import annotations

import re

import jax

from simclr_jax import precision


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


def check_pretrain_config(config) -> None:
  """Raises ConfigError for values that would fail later or silently do the wrong thing."""
  check_batch_size("batch_size", config.batch_size)
  require(config.optimizer.name in ("lars", "sgd"),
          f"optimizer.name must be 'lars' or 'sgd', got {config.optimizer.name!r}.")
  require(config.optimizer.lr_scaling in ("sqrt", "linear", "none"),
          f"optimizer.lr_scaling must be 'sqrt', 'linear' or 'none', got "
          f"{config.optimizer.lr_scaling!r}.")
  require(config.optimizer.schedule_unit in ("step", "epoch"),
          f"optimizer.schedule_unit must be 'step' or 'epoch', got "
          f"{config.optimizer.schedule_unit!r}.")
  check_learning_rate_multipliers("optimizer", config.optimizer)
  _check_augment(config.augment)
  check_compute_dtype(config)
  require(config.num_epochs > 0 or config.num_train_steps > 0,
          "Set num_epochs > 0 or num_train_steps > 0.")
  for name in ("log_every_steps", "checkpoint_every_steps", "max_checkpoints_to_keep"):
    require(isinstance(config[name], int) and config[name] > 0,
            f"{name} must be a positive integer, got {config[name]!r}.")


def check_learning_rate_multipliers(name: str, opt_config) -> None:
  """(regex, factor) pairs with valid regexes and factors >= 0."""
  for pair in opt_config.get("learning_rate_multipliers", ()):
    example = f'e.g. --config.{name}.learning_rate_multipliers=\'(("^predictor/", 10.0),)\''
    require(isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)
            and isinstance(pair[1], (int, float)) and pair[1] >= 0,
            f"{name}.learning_rate_multipliers must hold (regex, factor >= 0) pairs, got "
            f"{pair!r}: {example}.")
    try:
      re.compile(pair[0])
    except re.error as error:
      raise ConfigError(f"{name}.learning_rate_multipliers: {pair[0]!r} is not a regex "
                        f"({error}).") from None


def check_compute_dtype(config) -> None:
  require(config.compute_dtype in precision.COMPUTE_DTYPES,
          f"compute_dtype must be one of {sorted(precision.COMPUTE_DTYPES)}, got "
          f"{config.compute_dtype!r}.")


def _check_augment(aug) -> None:
  low, high = aug.crop_area_range
  require(0 < low <= high <= 1, f"augment.crop_area_range must satisfy 0 < low <= high <= 1, "
          f"got {aug.crop_area_range}.")
  require(0 < aug.crop_ratio_range[0] <= aug.crop_ratio_range[1],
          f"augment.crop_ratio_range must be increasing and positive, got "
          f"{aug.crop_ratio_range}.")
  require(aug.image_size > 0, f"augment.image_size must be positive, got {aug.image_size}.")
  require(0 < aug.eval_crop_fraction <= 1,
          f"augment.eval_crop_fraction must be in (0, 1], got {aug.eval_crop_fraction}.")
  for name in ("flip_probability", "color_jitter_probability", "grayscale_probability",
               "blur_probability"):
    require(0 <= aug[name] <= 1, f"augment.{name} must be in [0, 1], got {aug[name]}.")


def check_linear_eval_config(config) -> None:
  check_batch_size("linear_eval.batch_size", config.linear_eval.batch_size)
  check_compute_dtype(config)
  require(config.linear_eval.checkpoint_every_steps > 0,
          f"linear_eval.checkpoint_every_steps must be > 0, got "
          f"{config.linear_eval.checkpoint_every_steps}.")
  require(config.linear_eval.lr_scaling in ("linear", "none"),
          f"linear_eval.lr_scaling must be 'linear' or 'none', got "
          f"{config.linear_eval.lr_scaling!r}.")
  require(config.linear_eval.epochs > 0,
          f"linear_eval.epochs must be > 0, got {config.linear_eval.epochs}.")
  require(config.linear_eval.few_shot_per_class >= 0,
          "linear_eval.few_shot_per_class must be >= 0.")
  require(config.linear_eval.few_shot_trials >= 1, "linear_eval.few_shot_trials must be >= 1.")
  require(config.linear_eval.knn_k >= 1, "linear_eval.knn_k must be >= 1.")
  require(config.linear_eval.knn_temperature > 0, "linear_eval.knn_temperature must be > 0.")
  for name in ("weight_decay", "few_shot_weight_decay"):
    require(config.linear_eval[name] >= 0,
            f"linear_eval.{name} must be >= 0, got {config.linear_eval[name]}.")
