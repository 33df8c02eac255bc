"""SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"; v2 head: Chen et al., 2020b): an encoder and an MLP head g, NT-Xent over
the two views' embeddings, local anchors against keys gathered from every device.

Config block `config.simclr`: temperature, forward_views_separately, head_widths,
head_batch_norm, sum_view_losses.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from simclr_jax import backbones, config_checks, precision
from simclr_jax.losses import nt_xent as losses
from simclr_jax.methods import base, heads
from simclr_jax.sharding import DATA_AXIS


def build(config, rngs: nnx.Rngs, num_probe_classes: int = 0) -> base.Model:
  """Encoder + projection head `head` (+ online probe); head and encoder compute in
  config.compute_dtype, the probe in float32 on float32 features."""
  encoder = backbones.create(config, rngs)
  head = heads.MLP(encoder.num_features, tuple(config.simclr.head_widths),
                   config.simclr.head_batch_norm, rngs=rngs,
                   dtype=precision.compute_dtype(config))
  return base.Model(encoder, base.create_probe(encoder, num_probe_classes, rngs), head=head)


def loss(model: base.Model, target, views: jax.Array, method_config, mesh: Mesh,
         rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """NT-Xent of (N, 2, H, W, 3) views: (loss, features (N, 2, F), metrics)."""
  del target  # SimCLR has no target network.

  features, z = base.forward_views(base.encoder_then(model, "head", rngs), views,
                                   method_config.forward_views_separately)
  value, accuracy = losses.sharded_nt_xent(z[:, 0], z[:, 1], method_config.temperature, mesh,
                                           DATA_AXIS)
  if method_config.sum_view_losses:
    # The official code's scale: loss_a + loss_b, each the mean over one view's N anchors,
    # i.e. twice the mean over all 2N anchors (the seed's and the paper's notation).
    value = 2.0 * value
  return value, features, {"loss": value, "contrastive_accuracy": accuracy}


def check_config(config) -> None:
  block = config.simclr
  config_checks.require(block.temperature > 0, f"simclr.temperature must be > 0 (the paper "
                        f"uses 0.1-1.0), got {block.temperature}.")
  heads.check_widths("simclr.head_widths", block.head_widths)


METHOD = base.Method(
    name="simclr", build=build, loss=loss, check_config=check_config,
    model_fields=("simclr.head_widths", "simclr.head_batch_norm"), projection_head="head")
