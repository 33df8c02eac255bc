"""MoCo v3, ResNet recipe (Chen, Xie and He, 2021, "An Empirical Study of Training
Self-Supervised Vision Transformers"; facebookresearch/moco-v3): queries from the online
encoder, projector and predictor; keys from the momentum encoder and projector (an EMA of
the online ones); a symmetric InfoNCE with each device's queries against the keys of every
device.

Config block `config.mocov3`: projector_widths (3 layers, the last BatchNorm without
affine), predictor_widths (2 layers), temperature, base_target_momentum,
final_target_momentum. Differs from the official heads in one detail: the predictor's last
linear layer has a bias (the official one has none).
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from simclr_jax import backbones, config_checks, heads, losses, precision
from simclr_jax.methods import base
from simclr_jax.sharding import DATA_AXIS


def build(config, rngs: nnx.Rngs, num_probe_classes: int = 0) -> base.Model:
  block, dtype = config.mocov3, precision.compute_dtype(config)
  encoder = backbones.create(config, rngs)
  projector = heads.MLP(encoder.num_features, tuple(block.projector_widths), True, rngs=rngs,
                        dtype=dtype, last_norm="standardize")
  predictor = heads.MLP(block.projector_widths[-1], tuple(block.predictor_widths), True,
                        rngs=rngs, dtype=dtype, last_norm="none")
  return base.Model(encoder, base.create_probe(encoder, num_probe_classes, rngs),
                    projector=projector, predictor=predictor)


def loss(model: base.Model, target: base.Model, views: jax.Array, method_config,
         mesh: Mesh) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """ctr(q1, k2) + ctr(q2, k1) for (N, 2, H, W, 3) views (moco-v3's forward)."""

  def queries(images):
    features = model.encoder(images, train=True)
    return features, model.predictor(model.projector(features, train=True), train=True)

  def keys(images):
    return (target.projector(target.encoder(images, train=True), train=True),)

  features, q = base.forward_views(queries, views, separately=False)
  (k,) = base.forward_views(keys, views, separately=False)
  k = jax.lax.stop_gradient(k)
  temperature = method_config.temperature
  loss_1, accuracy_1 = losses.sharded_infonce(q[:, 0], k[:, 1], temperature, mesh, DATA_AXIS)
  loss_2, accuracy_2 = losses.sharded_infonce(q[:, 1], k[:, 0], temperature, mesh, DATA_AXIS)
  value = loss_1 + loss_2
  return value, features, {"loss": value,
                           "contrastive_accuracy": (accuracy_1 + accuracy_2) / 2}


def check_config(config) -> None:
  block = config.mocov3
  config_checks.require(block.temperature > 0,
                        f"mocov3.temperature must be > 0, got {block.temperature}.")
  heads.check_widths("mocov3.projector_widths", block.projector_widths)
  heads.check_widths("mocov3.predictor_widths", block.predictor_widths)
  config_checks.require(
      block.predictor_widths[-1] == block.projector_widths[-1],
      f"mocov3.predictor_widths must end at the projection's width "
      f"{block.projector_widths[-1]} (queries meet keys), got {tuple(block.predictor_widths)}.")
  base.check_target_momentum(config, "mocov3")


METHOD = base.Method(
    name="mocov3", build=build, loss=loss, check_config=check_config,
    model_fields=("mocov3.projector_widths", "mocov3.predictor_widths"),
    target_modules=("encoder", "projector"))
