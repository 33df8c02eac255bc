"""BYOL (Grill et al., 2020, "Bootstrap Your Own Latent"): an online encoder, projector and
predictor regress the target network's projection of the other view; the target is an
exponential moving average of the online encoder and projector (never differentiated).

Config block `config.byol`: projector_widths, predictor_widths, base_target_momentum,
final_target_momentum. The heads are BYOL's: Linear -> BatchNorm -> ReLU -> Linear.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from simclr_jax import backbones, config_checks, heads, losses, precision
from simclr_jax.methods import base


def build(config, rngs: nnx.Rngs, num_probe_classes: int = 0) -> base.Model:
  block, dtype = config.byol, precision.compute_dtype(config)
  encoder = backbones.create(config, rngs)
  projector = heads.MLP(encoder.num_features, tuple(block.projector_widths), True, rngs=rngs,
                        dtype=dtype, last_norm="none")
  predictor = heads.MLP(block.projector_widths[-1], tuple(block.predictor_widths), True,
                        rngs=rngs, dtype=dtype, last_norm="none")
  return base.Model(encoder, base.create_probe(encoder, num_probe_classes, rngs),
                    projector=projector, predictor=predictor)


def loss(model: base.Model, target: base.Model, views: jax.Array, method_config,
         mesh: Mesh) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """The symmetric BYOL loss of (N, 2, H, W, 3) views: view 1's prediction regresses view
  2's target projection and the other way round (the paper's L + L~)."""
  del method_config, mesh  # Per-example loss: GSPMD reduces its batch mean.

  def online(images):
    features = model.encoder(images, train=True)
    return features, model.predictor(model.projector(features, train=True), train=True)

  def projected_by_target(images):
    return (target.projector(target.encoder(images, train=True), train=True),)

  features, predictions = base.forward_views(online, views, separately=False)
  (targets,) = base.forward_views(projected_by_target, views, separately=False)
  targets = jax.lax.stop_gradient(targets)
  value = (losses.byol_loss(predictions[:, 0], targets[:, 1]) +
           losses.byol_loss(predictions[:, 1], targets[:, 0]))
  return value, features, {"loss": value}


def check_config(config) -> None:
  block = config.byol
  heads.check_widths("byol.projector_widths", block.projector_widths)
  heads.check_widths("byol.predictor_widths", block.predictor_widths)
  config_checks.require(
      block.predictor_widths[-1] == block.projector_widths[-1],
      f"byol.predictor_widths must end at the projection's width "
      f"{block.projector_widths[-1]} (the prediction regresses it), got "
      f"{tuple(block.predictor_widths)}.")
  base.check_target_momentum(config, "byol")


METHOD = base.Method(
    name="byol", build=build, loss=loss, check_config=check_config,
    model_fields=("byol.projector_widths", "byol.predictor_widths"),
    target_modules=("encoder", "projector"))
