"""VICReg (Bardes, Ponce and LeCun, 2022, "VICReg: Variance-Invariance-Covariance
Regularization"; facebookresearch/vicreg): an expander after the encoder; the loss keeps
the two views' embeddings close (invariance), each dimension's standard deviation above 1
(variance) and the dimensions decorrelated (covariance), the last two over the global
batch, gathered across devices with gradients through the gather.

Config block `config.vicreg`: expander_widths, invariance_weight, variance_weight,
covariance_weight, forward_views_separately (VICReg's own: one pass per view). The expander
is Linear -> BatchNorm -> ReLU per hidden layer, then a Linear without bias (VICReg's).
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from simclr_jax import backbones, config_checks, precision
from simclr_jax.losses import vicreg as losses
from simclr_jax.methods import base, heads
from simclr_jax.sharding import DATA_AXIS


def build(config, rngs: nnx.Rngs, num_probe_classes: int = 0) -> base.Model:
  encoder = backbones.create(config, rngs)
  expander = heads.MLP(encoder.num_features, tuple(config.vicreg.expander_widths), True,
                       rngs=rngs, dtype=precision.compute_dtype(config), last_norm="none",
                       last_bias=False)
  return base.Model(encoder, base.create_probe(encoder, num_probe_classes, rngs),
                    expander=expander)


def loss(model: base.Model, target, views: jax.Array, method_config, mesh: Mesh,
         rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """The weighted VICReg loss of (N, 2, H, W, 3) views and its three terms."""
  del target  # VICReg has no target network.

  features, z = base.forward_views(base.encoder_then(model, "expander", rngs), views,
                                   method_config.forward_views_separately)
  terms = losses.sharded_vicreg_terms(z[:, 0], z[:, 1], mesh, DATA_AXIS)
  value = losses.combine_vicreg_terms(terms, method_config.invariance_weight,
                                      method_config.variance_weight,
                                      method_config.covariance_weight)
  return value, features, {"loss": value, **{f"{name}_term": term
                                             for name, term in terms.items()}}


def check_config(config) -> None:
  block = config.vicreg
  heads.check_widths("vicreg.expander_widths", block.expander_widths)
  for name in ("invariance_weight", "variance_weight", "covariance_weight"):
    config_checks.require(block[name] >= 0, f"vicreg.{name} must be >= 0, got {block[name]}.")


METHOD = base.Method(
    name="vicreg", build=build, loss=loss, check_config=check_config,
    model_fields=("vicreg.expander_widths",), projection_head="expander")
