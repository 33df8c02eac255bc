"""Optimisers and learning-rate schedules from optax, configured by `config.optimizer`."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Sequence

import jax
import optax

from simclr_jax import config_checks

OPTIMIZERS = ("lars", "sgd", "adamw")
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
  for field in ("exclude_patterns", "frozen_patterns"):
    for pattern in opt_config.get(field, ()):
      _check_regex(f"{name}.{field}", pattern)
  _check_numbers(name, opt_config)


def _check_regex(field: str, pattern) -> None:
  config_checks.require(isinstance(pattern, str), f"{field} must hold regexes (strings), got "
                        f"{pattern!r}.")
  try:
    re.compile(pattern)
  except re.error as error:
    raise config_checks.ConfigError(f"{field}: {pattern!r} is not a regex ({error}).") from None


def _check_numbers(name: str, opt_config) -> None:
  """AdamW's betas and epsilon, the clipping norm and the layer decay (fine-tuning's)."""
  betas = tuple(opt_config.get("adam_betas", (0.9, 0.999)))
  config_checks.require(
      len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas),
      f"{name}.adam_betas must be two numbers in [0, 1), e.g. (0.9, 0.999), got {betas}.")
  epsilon = opt_config.get("adam_epsilon", 1e-8)
  config_checks.require(_is_number(epsilon) and epsilon > 0,
                        f"{name}.adam_epsilon must be > 0, got {epsilon!r}.")
  clip = opt_config.get("gradient_clip_norm", 0.0)
  config_checks.require(_is_number(clip) and clip >= 0, f"{name}.gradient_clip_norm must be "
                        f">= 0 (0 = no clipping), got {clip!r}.")
  decay = opt_config.get("layer_decay", 1.0)
  config_checks.require(_is_number(decay) and 0 < decay <= 1, f"{name}.layer_decay must be in "
                        f"(0, 1] (1 = off; MAE: 0.65 for ViT-B), got {decay!r}.")


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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


@dataclasses.dataclass(frozen=True)
class Layers:
  """Where each parameter of a model sits for layer-wise learning-rate decay (MAE's
  util/lr_decay.py, after BEiT). `num_layers` is MAE's: the number of blocks + 1, the id
  of the last layer; `layer_of` maps a '/'-joined parameter path to its layer id, 0 for the
  embeddings, i + 1 for block i, num_layers for what follows the last block (final norm,
  head layer, classifier)."""
  num_layers: int
  layer_of: Callable[[str], int]


def layer_decay_factor(decay: float, num_layers: int, layer: int) -> float:
  """The learning-rate factor of layer `layer` (0 .. num_layers): decay ** (num_layers -
  layer), so the classifier's is 1 and the embeddings' decay ** num_layers (with L blocks,
  num_layers = L + 1): MAE's layer_scales, util/lr_decay.py:23-25."""
  if not 0 <= layer <= num_layers:
    raise ValueError(f"Layer id {layer} is outside 0..{num_layers}.")
  return decay ** (num_layers - layer)


def scale_by_layer(decay: float, layers: Layers) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its layer's `layer_decay_factor`: after the
  optimiser, a learning rate times the factor (MAE's util/lr_sched.py:16-18 sets each
  group's lr = lr x lr_scale; AdamW's decoupled decay and LARS's trust ratio scale with it).
  Stateless: the factors are constants of the compiled step."""

  def scale(path, update):
    return update * layer_decay_factor(decay, layers.num_layers,
                                       layers.layer_of(_path_name(path)))

  return optax.stateless(
      lambda updates, params=None: jax.tree_util.tree_map_with_path(scale, updates))


def freeze(tx: optax.GradientTransformation,
           frozen_patterns: Sequence[str]) -> optax.GradientTransformation:
  """`tx` for the parameters whose '/'-joined path matches none of `frozen_patterns`; the
  others are out of the optimiser entirely (optax.set_to_zero: no update, no weight decay,
  no optimiser state, no share of a clipping norm), so they stay bit-identical, as
  parameters with requires_grad=False in PyTorch (MoCo v3's stop-grad patch embedding,
  moco-v3 vits.py:49-51). ConfigError when a pattern matches no parameter (a typo would
  otherwise freeze nothing)."""
  patterns = tuple(re.compile(p) for p in frozen_patterns)

  def labels(params):
    names = [_path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    for pattern in patterns:
      config_checks.require(any(pattern.search(name) for name in names),
                            f"frozen_patterns: {pattern.pattern!r} matches no parameter; "
                            f"the paths look like {names[:3]}.")
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if any(p.search(_path_name(path)) for p in patterns)
        else "trainable", params)

  return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)


def create_optimizer(opt_config, schedule: optax.Schedule,
                     layers: Layers | None = None) -> optax.GradientTransformation:
  """The optimiser of a block (config.optimizer, config.finetune.optimizer), in this order:
  the gradients clipped to the global norm `gradient_clip_norm` (when > 0, as
  torch.nn.utils.clip_grad_norm_ before the step); LARS, SGD with momentum (Nesterov's when
  `nesterov`; coupled L2 weight decay, as torch.optim.SGD) or AdamW (decoupled, as
  torch.optim.AdamW); `learning_rate_multipliers`' groups scaled; each layer's updates
  scaled for `layer_decay` != 1 (`layers` says where each parameter sits). All of it for
  the parameters `frozen_patterns` leaves trainable (`freeze`); the clipping norm is theirs.

  With none of these options the transformation, and so its state's tree, is what it was
  before they existed: optimiser states in older checkpoints restore.
  """
  steps = []
  clip = opt_config.get("gradient_clip_norm", 0.0)
  if clip > 0:
    steps.append(optax.clip_by_global_norm(clip))
  steps.append(_base_optimizer(opt_config, schedule))
  multipliers = tuple(opt_config.get("learning_rate_multipliers", ()))
  if multipliers:
    steps.append(scale_learning_rates(multipliers))
  decay = opt_config.get("layer_decay", 1.0)
  if decay != 1.0:
    if layers is None:
      raise ValueError("layer_decay != 1 needs the model's layers (create_optimizer's "
                       "`layers`).")
    steps.append(scale_by_layer(decay, layers))
  tx = steps[0] if len(steps) == 1 else optax.chain(*steps)
  frozen = tuple(opt_config.get("frozen_patterns", ()))
  return freeze(tx, frozen) if frozen else tx


def _base_optimizer(opt_config, schedule: optax.Schedule) -> optax.GradientTransformation:
  patterns = tuple(opt_config.exclude_patterns)
  exclude = opt_config.exclude_bn_and_bias
  mask = (lambda params: decay_mask(params, patterns)) if exclude else True
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
        optax.add_decayed_weights(opt_config.weight_decay, mask=mask if exclude else None),
        optax.sgd(schedule, momentum=opt_config.momentum or None,
                  nesterov=bool(opt_config.get("nesterov", False))))
  if opt_config.name == "adamw":
    # torch.optim.AdamW: p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), the decay
    # decoupled from the moments. exclude_bn_and_bias=False decays every parameter, as
    # MoCo v3 (main_moco.py:228-230 hands model.parameters() to AdamW with weight_decay).
    beta1, beta2 = opt_config.get("adam_betas", (0.9, 0.999))
    return optax.adamw(schedule, b1=beta1, b2=beta2, eps=opt_config.get("adam_epsilon", 1e-8),
                       weight_decay=opt_config.weight_decay, mask=mask if exclude else None)
  raise ValueError(f"name must be one of {list(OPTIMIZERS)}, got {opt_config.name!r}.")
