"""MoCo v3, ResNet recipe (Chen, Xie and He, 2021, "An Empirical Study of Training
Self-Supervised Vision Transformers"; facebookresearch/moco-v3): queries from the online
encoder, projector and predictor; keys from the momentum encoder and projector (an EMA of
the online ones); a symmetric InfoNCE with each device's queries against the keys of every
device.

Config block `config.mocov3`: projector_widths (the ResNet recipe's 2 layers, the last
BatchNorm without affine; 3 in its ViT recipe), predictor_widths (2 layers),
predictor_last_batch_norm (False: the ResNet recipe's; True: its ViT recipe's last
BatchNorm without affine, moco/builder.py:122 with _build_mlp's last_bn=True), temperature,
base_target_momentum, final_target_momentum, forward_views_separately (moco-v3's own: one
pass per view). Linear layers without bias, as moco-v3's `_build_mlp`.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from simclr_jax import config_checks
from simclr_jax.losses import infonce as losses
from simclr_jax.methods import base
from simclr_jax.sharding import DATA_AXIS


def build(config, rngs: nnx.Rngs, num_probe_classes: int = 0) -> base.Model:
  block = config.mocov3
  return base.build_with_predictor(config, block, rngs, num_probe_classes,
                                   projector_last_norm="standardize",
                                   predictor_last_norm=("standardize"
                                                        if block.get("predictor_last_batch_norm")
                                                        else "none"))


def loss(model: base.Model, target: base.Model, views: jax.Array, method_config, mesh: Mesh,
         rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """ctr(q1, k2) + ctr(q2, k1) for (N, 2, H, W, 3) views (moco-v3's forward)."""
  features, q, k = base.predictions_and_targets(
      model, target, views, method_config.forward_views_separately, rngs)
  temperature = method_config.temperature
  loss_1, accuracy_1 = losses.sharded_infonce(q[:, 0], k[:, 1], temperature, mesh, DATA_AXIS)
  loss_2, accuracy_2 = losses.sharded_infonce(q[:, 1], k[:, 0], temperature, mesh, DATA_AXIS)
  value = loss_1 + loss_2
  return value, features, {"loss": value,
                           "contrastive_accuracy": (accuracy_1 + accuracy_2) / 2}


def check_config(config) -> None:
  config_checks.require(config.mocov3.temperature > 0,
                        f"mocov3.temperature must be > 0, got {config.mocov3.temperature}.")
  base.check_predictor_heads(config, "mocov3")


METHOD = base.Method(
    name="mocov3", build=build, loss=loss, check_config=check_config,
    model_fields=("mocov3.projector_widths", "mocov3.predictor_widths",
                  "mocov3.predictor_last_batch_norm"),
    target_modules=("encoder", "projector"), projection_head="projector")
