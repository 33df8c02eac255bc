"""Optimisers and learning-rate schedules from optax, configured by `config.optimizer`."""

from __future__ import annotations

import math
import re
from typing import Sequence

import jax
import optax

from simclr_jax import config_checks

OPTIMIZERS = ("lars", "sgd")
LR_SCALINGS = ("sqrt", "linear", "none")
SCHEDULE_UNITS = ("step", "epoch")


def check_config(name: str, opt_config) -> None:
  """ConfigError for an optimiser block (`config.<name>`: config.optimizer,
  config.finetune.optimizer) that cannot work."""
  for field, choices in (("name", OPTIMIZERS), ("lr_scaling", LR_SCALINGS),
                         ("schedule_unit", SCHEDULE_UNITS)):
    config_checks.require(opt_config[field] in choices,
                          f"{name}.{field} must be one of {list(choices)}, got "
                          f"{opt_config[field]!r}.")
  for pair in opt_config.get("learning_rate_multipliers", ()):
    example = f'e.g. --config.{name}.learning_rate_multipliers=\'(("^predictor/", 10.0),)\''
    config_checks.require(
        isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)
        and isinstance(pair[1], (int, float)) and pair[1] >= 0,
        f"{name}.learning_rate_multipliers must hold (regex, factor >= 0) pairs, got "
        f"{pair!r}: {example}.")
    try:
      re.compile(pair[0])
    except re.error as error:
      raise config_checks.ConfigError(f"{name}.learning_rate_multipliers: {pair[0]!r} is not "
                                      f"a regex ({error}).") from None


def scaled_learning_rate(opt_config, batch_size: int) -> float:
  """Peak learning rate after the batch-size scaling rule."""
  base = opt_config.base_learning_rate
  if opt_config.lr_scaling == "sqrt":
    return base * math.sqrt(batch_size)
  if opt_config.lr_scaling == "linear":
    return base * batch_size / 256
  if opt_config.lr_scaling == "none":
    return base
  raise ValueError(f"lr_scaling must be one of {list(LR_SCALINGS)}, got "
                   f"{opt_config.lr_scaling!r}.")


def learning_rate_schedule(opt_config, batch_size: int, steps_per_epoch: int,
                           num_train_steps: int) -> optax.Schedule:
  """Linear warm-up then cosine decay to zero, per step or held constant per epoch."""
  peak = scaled_learning_rate(opt_config, batch_size)
  if opt_config.schedule_unit == "step":
    warmup = int(round(opt_config.warmup_epochs * steps_per_epoch))
    return _warmup_cosine(peak, warmup, num_train_steps)
  if opt_config.schedule_unit == "epoch":
    num_epochs = max(1, math.ceil(num_train_steps / steps_per_epoch))
    by_epoch = _warmup_cosine(peak, int(round(opt_config.warmup_epochs)), num_epochs)
    return lambda step: by_epoch(step // steps_per_epoch)
  raise ValueError(f"schedule_unit must be one of {list(SCHEDULE_UNITS)}, got "
                   f"{opt_config.schedule_unit!r}.")


def _warmup_cosine(peak: float, warmup: int, total: int) -> optax.Schedule:
  """0 -> peak linearly over `warmup` units, then cosine to 0 at `total`."""
  if warmup <= 0:
    return optax.cosine_decay_schedule(peak, max(total, 1))
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1))


def decay_mask(params, exclude_patterns: Sequence[str] = ()):
  """True for weights that take weight decay (and LARS's trust ratio): kernels only, and
  none whose '/'-joined path (e.g. 'probe/kernel') matches one of `exclude_patterns`.

  BatchNorm scales and shifts and all biases are excluded, as in the SimCLR paper; the
  official SimCLR code also excludes its supervised head (here: '^probe/').
  """
  patterns = [re.compile(p) for p in exclude_patterns]

  def takes_decay(path, _):
    if getattr(path[-1], "key", None) != "kernel":
      return False
    return not any(p.search(_path_name(path)) for p in patterns)

  return jax.tree_util.tree_map_with_path(takes_decay, params)


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def scale_learning_rates(multipliers: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
  """Multiplies the updates of the parameters whose '/'-joined path matches a regex by its
  factor (the first matching pair wins), as big_vision's `lr_mults`: after LARS or SGD, this
  is a learning rate times the factor for that group. E.g. (('^predictor/', 10.0),)."""
  multipliers = tuple((re.compile(pattern), float(factor)) for pattern, factor in multipliers)

  def group(path, _):
    name = _path_name(path)
    return next((str(i) for i, (p, _) in enumerate(multipliers) if p.search(name)), "rest")

  transforms = {str(i): optax.scale(factor) for i, (_, factor) in enumerate(multipliers)}
  transforms["rest"] = optax.identity()
  return optax.multi_transform(
      transforms, lambda params: jax.tree_util.tree_map_with_path(group, params))


def create_optimizer(opt_config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """LARS or SGD with momentum, Nesterov's when `nesterov` (coupled L2 weight decay, as
  torch.optim.SGD); then `learning_rate_multipliers`' groups scaled, when given."""
  optimizer = _base_optimizer(opt_config, schedule)
  multipliers = tuple(opt_config.get("learning_rate_multipliers", ()))
  return optax.chain(optimizer, scale_learning_rates(multipliers)) if multipliers else optimizer


def _base_optimizer(opt_config, schedule: optax.Schedule) -> optax.GradientTransformation:
  patterns = tuple(opt_config.exclude_patterns)
  mask = (lambda params: decay_mask(params, patterns)) if opt_config.exclude_bn_and_bias else True
  if opt_config.name == "lars":
    # optax.lars scales by the rate before the momentum trace, as SimCLR's LARS; BYOL's,
    # MoCo v3's and VICReg's scale the trace after it. The two differ only while the rate
    # changes (warm-up, cosine), a second-order effect at momentum 0.9 (docs/recipes.md).
    return optax.lars(schedule, weight_decay=opt_config.weight_decay, weight_decay_mask=mask,
                      trust_coefficient=opt_config.trust_coefficient, trust_ratio_mask=mask,
                      momentum=opt_config.momentum)
  if opt_config.name == "sgd":
    # torch.optim.SGD: g += wd * p; buf = momentum * buf + g; p -= lr * buf.
    return optax.chain(
        optax.add_decayed_weights(opt_config.weight_decay,
                                  mask=mask if opt_config.exclude_bn_and_bias else None),
        optax.sgd(schedule, momentum=opt_config.momentum or None,
                  nesterov=bool(opt_config.get("nesterov", False))))
  raise ValueError(f"name must be one of {list(OPTIMIZERS)}, got {opt_config.name!r}.")
