"""What a self-supervised method is to the shared trainer, and the parts methods share:
the model container, the two-view forward pass, the online probe and the EMA target.

A method is a `Method` record (not a class hierarchy): how to build its model, its loss
over the views, which of its modules have an EMA target network, its config checks and
the config fields that shape its model. `pretrain_step` holds no method names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from simclr_jax import backbones, config_checks, precision
from simclr_jax.methods import heads

LossFn = Callable[..., tuple[jax.Array, jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Method:
  """A self-supervised method.

  Attributes:
    name: its registry name, also the name of its config block (`config.<name>`).
    build: (config, rngs, num_probe_classes) -> `Model` (backbone + heads + probe).
    loss: (model, target, views, method_config, mesh, rngs=None) -> (loss, features,
      metrics). `views` are (N, 2, H, W, 3) model input sharded on 'data'; `target` is the
      model with the target network's weights in `target_modules` (None without a
      target); `rngs` is the step's randomness for stochastic layers (an nnx.Rngs with a
      'dropout' stream: the ViT's drop-path), or None for none: the loss gives it to the
      ONLINE encoder's calls only (each call draws its own key, so two passes, one per
      view, get different masks), never to the target network, which runs in training
      mode without them (MoCo v3's momentum encoder, as DINO's teacher, has no drop-path);
      `features` are the online encoder's (N, 2, F) (for the online probe); `metrics`
      are scalars for TensorBoard.
    check_config: (config) -> None; raises ConfigError for a bad method block.
    model_fields: dotted config names (prefixes) that shape the model: a checkpoint
      restores only into a config that agrees on them.
    target_modules: the model's attributes whose exponential moving average is the target
      network (BYOL's encoder and projector); () for none.
    projection_head: the `heads.MLP` on the encoder's features (SimCLR's `head`, BYOL's
      `projector`, VICReg's `expander`), whose first layer fine-tuning can keep (SimCLR v2).
  """
  name: str
  build: Callable[..., "Model"]
  loss: LossFn
  check_config: Callable[[Any], None]
  model_fields: tuple[str, ...]
  target_modules: tuple[str, ...] = ()
  projection_head: str = "head"


class Model(nnx.Module):
  """The backbone (`encoder`), the method's heads by name, and an optional online probe.

  Every method's model has `encoder` (what later stages restore) and `probe` (None
  without one); heads are attributes named by the method (SimCLR's `head`, BYOL's
  `projector` and `predictor`).
  """

  def __init__(self, encoder: nnx.Module, probe: nnx.Linear | None = None,
               **head_modules: nnx.Module):
    self.encoder = encoder
    for name, head in head_modules.items():
      setattr(self, name, head)
    self.probe = probe


def create_probe(encoder: nnx.Module, num_classes: int, rngs: nnx.Rngs) -> nnx.Linear | None:
  """A float32 linear probe on the encoder's features, or None when num_classes is 0."""
  return nnx.Linear(encoder.num_features, num_classes, rngs=rngs) if num_classes else None


def forward_views(fn: Callable[[jax.Array], tuple[jax.Array, ...]], views: jax.Array,
                  separately: bool) -> tuple[jax.Array, ...]:
  """Applies `fn` ((B, H, W, 3) -> arrays with batch B first) to (N, 2, H, W, 3) views;
  each output comes back as (N, 2, ...).

  One pass over the 2N images (BatchNorm statistics over both views) or one pass per view
  (statistics per view, running averages updated twice, as the seed's two model calls).
  The reshape keeps each image's two views on the device that holds the image.
  """
  n = views.shape[0]
  if separately:
    first, second = fn(views[:, 0]), fn(views[:, 1])
    return tuple(jnp.stack([a, b], axis=1) for a, b in zip(first, second))
  outputs = fn(views.reshape((2 * n, *views.shape[2:])))
  return tuple(out.reshape((n, 2, *out.shape[1:])) for out in outputs)


def encoder_then(model: Model, head: str, rngs: nnx.Rngs | None = None
                 ) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
  """images (B, H, W, 3) -> (features (B, F), model.<head>(features)), training mode, the
  encoder's stochastic layers drawing from `rngs` (None: none)."""

  def forward(images):
    features = model.encoder(images, train=True, rngs=rngs)
    return features, getattr(model, head)(features, train=True)

  return forward


def build_with_predictor(config, block, rngs: nnx.Rngs, num_probe_classes: int,
                         projector_last_norm: str, predictor_last_norm: str = "none") -> Model:
  """Encoder + `projector` + `predictor` (+ probe), the heads from `block`'s
  projector_widths and predictor_widths (BYOL, MoCo v3); `*_last_norm` normalise each
  head's output (heads.LAST_NORMS)."""
  dtype = precision.compute_dtype(config)
  encoder = backbones.create(config, rngs)
  projector = heads.MLP(encoder.num_features, tuple(block.projector_widths), True, rngs=rngs,
                        dtype=dtype, last_norm=projector_last_norm, last_bias=False)
  predictor = heads.MLP(block.projector_widths[-1], tuple(block.predictor_widths), True,
                        rngs=rngs, dtype=dtype, last_norm=predictor_last_norm, last_bias=False)
  return Model(encoder, create_probe(encoder, num_probe_classes, rngs), projector=projector,
               predictor=predictor)


def predictions_and_targets(model: Model, target: Model, views: jax.Array, separately: bool,
                            rngs: nnx.Rngs | None = None
                            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """For (N, 2, H, W, 3) views: the online features (N, 2, F), the online predictions
  predictor(projector(encoder(x))) (N, 2, D) and the target projections
  projector'(encoder'(x)) (N, 2, D), the last as constants (stop_gradient). `separately`:
  one pass per view (`forward_views`), for the online and the target network alike.
  `rngs`: the online encoder's stochastic layers (drop-path); the target's run none."""

  def online(images):
    features = model.encoder(images, train=True, rngs=rngs)
    return features, model.predictor(model.projector(features, train=True), train=True)

  def projected_by_target(images):  # No rngs: an EMA target runs no drop-path.
    return (target.projector(target.encoder(images, train=True), train=True),)

  features, predictions = forward_views(online, views, separately)
  (targets,) = forward_views(projected_by_target, views, separately)
  return features, predictions, jax.lax.stop_gradient(targets)


def check_predictor_heads(config, block_name: str) -> None:
  """ConfigError unless the heads' widths are positive and the prediction has the
  projection's width (it regresses, or is scored against, a projection)."""
  block = config[block_name]
  heads.check_widths(f"{block_name}.projector_widths", block.projector_widths)
  heads.check_widths(f"{block_name}.predictor_widths", block.predictor_widths)
  config_checks.require(
      block.predictor_widths[-1] == block.projector_widths[-1],
      f"{block_name}.predictor_widths must end at the projection's width "
      f"{block.projector_widths[-1]}, got {tuple(block.predictor_widths)}.")
  check_target_momentum(config, block_name)


def online_probe_loss(model: Model, features: jax.Array,
                      labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cross entropy and accuracy of the online probe on (N, 2, F) features of both views.

  stop_gradient: the probe learns from the encoder, the encoder never from the labels.
  """
  logits = model.probe(jax.lax.stop_gradient(features))                   # (N, 2, C)
  labels = jnp.broadcast_to(labels[:, None], logits.shape[:2])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, jnp.mean(jnp.argmax(logits, axis=-1) == labels)


# ------------------------------------------------------------------ the EMA target


def target_momentum_schedule(base: float, final: float, num_train_steps: int) -> optax.Schedule:
  """BYOL's cosine schedule: tau_k = final - (final - base) * (cos(pi k / K) + 1) / 2,
  from `base` at step 0 to `final` at step K = num_train_steps (MoCo v3 uses it too)."""
  gap = optax.cosine_decay_schedule(final - base, max(num_train_steps, 1))
  return lambda step: final - gap(step)


def ema_update(target, online, momentum: jax.Array):
  """target <- momentum * target + (1 - momentum) * online, leaf by leaf."""
  return jax.tree.map(lambda t, o: momentum * t + (1 - momentum) * o, target, online)


def check_target_momentum(config, block_name: str) -> None:
  """ConfigError unless 0 <= base_target_momentum <= final_target_momentum <= 1."""
  block = config[block_name]
  config_checks.require(
      0 <= block.base_target_momentum <= block.final_target_momentum <= 1,
      f"{block_name}.base_target_momentum and final_target_momentum must satisfy 0 <= base "
      f"<= final <= 1, got {block.base_target_momentum} and {block.final_target_momentum}.")


def target_part(tree: dict[str, Any], modules: tuple[str, ...]) -> dict[str, Any]:
  """The sub-dicts of `tree` (params or batch statistics by module) that `modules` name."""
  return {name: tree[name] for name in modules if name in tree}
