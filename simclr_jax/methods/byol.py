"""BYOL (Grill et al., 2020, "Bootstrap Your Own Latent"): an online encoder, projector and
predictor regress the target network's projection of the other view; the target is an
exponential moving average of the online encoder and projector (never differentiated).

Config block `config.byol`: projector_widths, predictor_widths, base_target_momentum,
final_target_momentum, forward_views_separately (BYOL's own: one pass per view, so BatchNorm
statistics are per view). The heads are BYOL's: Linear -> BatchNorm -> ReLU -> Linear
(no bias).
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from simclr_jax.losses import byol as losses
from simclr_jax.methods import base


def build(config, rngs: nnx.Rngs, num_probe_classes: int = 0) -> base.Model:
  return base.build_with_predictor(config, config.byol, rngs, num_probe_classes,
                                   projector_last_norm="none")


def loss(model: base.Model, target: base.Model, views: jax.Array, method_config, mesh: Mesh,
         rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """The symmetric BYOL loss of (N, 2, H, W, 3) views: view 1's prediction regresses view
  2's target projection and the other way round (the paper's L + L~)."""
  del mesh  # A per-example loss: GSPMD reduces its batch mean.
  features, predictions, targets = base.predictions_and_targets(
      model, target, views, method_config.forward_views_separately, rngs)
  value = (losses.byol_loss(predictions[:, 0], targets[:, 1]) +
           losses.byol_loss(predictions[:, 1], targets[:, 0]))
  return value, features, {"loss": value}


def check_config(config) -> None:
  base.check_predictor_heads(config, "byol")


METHOD = base.Method(
    name="byol", build=build, loss=loss, check_config=check_config,
    model_fields=("byol.projector_widths", "byol.predictor_widths"),
    target_modules=("encoder", "projector"), projection_head="projector")
