"""NT-Xent (normalised temperature-scaled cross entropy), SimCLR's loss, on one device and
across a mesh.

For N images with two views, the 2N embeddings are the anchors; each anchor's positive is
the other view of its image (index i <-> i + N in the concatenation [z1; z2]), the other
2N - 2 embeddings are its negatives and the anchor itself is excluded. The loss is the mean
cross entropy over the 2N anchors, as in the seed's `nt_xent_loss`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from simclr_jax.losses import normalize


def _anchor_losses(local_z1: jax.Array, local_z2: jax.Array, keys: jax.Array,
                   offset: jax.Array | int, temperature: float) -> tuple[jax.Array, jax.Array]:
  """Scores 2n local anchors against all 2N keys.

  Args:
    local_z1, local_z2: (n, D) normalised embeddings of this shard's images, both views.
    keys: (2N, D) normalised embeddings of all images, [view 1 of all; view 2 of all].
    offset: global index of this shard's first image.
    temperature: softmax temperature tau.

  Returns:
    (2n,) cross-entropy per anchor and (2n,) whether the positive scored highest.
  """
  n = local_z1.shape[0]
  num_images = keys.shape[0] // 2
  anchors = jnp.concatenate([local_z1, local_z2], axis=0)            # (2n, D)
  # HIGHEST: TPU's default precision would round the float32 embeddings to bfloat16 in
  # this matmul (about 3 significant digits of each cosine); the loss is float32 throughout.
  logits = jnp.matmul(anchors, keys.T, precision=jax.lax.Precision.HIGHEST) / temperature
  image = offset + jnp.arange(n)
  self_index = jnp.concatenate([image, image + num_images])             # (2n,)
  positive = jnp.concatenate([image + num_images, image])               # (2n,)
  is_self = jnp.arange(keys.shape[0])[None, :] == self_index[:, None]
  logits = jnp.where(is_self, -jnp.inf, logits)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, positive)
  correct = jnp.argmax(logits, axis=-1) == positive
  return losses, correct


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float = 0.5) -> jax.Array:
  """The seed's NT-Xent on one device.

  Args:
    z1, z2: (N, D) raw embeddings of the two views (normalised here).
    temperature: tau > 0.

  Returns:
    Scalar mean loss over the 2N anchors.
  """
  return nt_xent_with_accuracy(z1, z2, temperature)[0]


def nt_xent_with_accuracy(z1: jax.Array, z2: jax.Array,
                          temperature: float) -> tuple[jax.Array, jax.Array]:
  """(loss, contrastive top-1 accuracy) for (N, D) embeddings on one device."""
  z1, z2 = normalize.l2_normalize(z1), normalize.l2_normalize(z2)
  keys = jnp.concatenate([z1, z2], axis=0)
  losses, correct = _anchor_losses(z1, z2, keys, 0, temperature)
  return jnp.mean(losses), jnp.mean(correct)


def sharded_nt_xent(z1: jax.Array, z2: jax.Array, temperature: float, mesh: Mesh,
                    axis_name: str = "data") -> tuple[jax.Array, jax.Array]:
  """NT-Xent over embeddings sharded on `axis_name`, with logits (2N/devices, 2N) per device.

  Each device normalises its own shard, all-gathers both views' embeddings (the gather is
  differentiable: its transpose is a reduce-scatter, so gradients reach every shard), scores
  its local anchors against all keys, and the per-anchor losses are summed across devices.
  Equal in value and gradients to `nt_xent_with_accuracy` on the same global batch.

  Args:
    z1, z2: (N, D) global arrays sharded along N on `axis_name`.
    temperature: tau > 0.
    mesh: the device mesh.

  Returns:
    (loss, contrastive top-1 accuracy), replicated scalars.
  """
  num_anchors = 2 * z1.shape[0]

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(axis_name), P(axis_name)),
                     out_specs=(P(), P()))
  def per_shard(local_z1, local_z2):
    local_z1, local_z2 = normalize.l2_normalize(local_z1), normalize.l2_normalize(local_z2)
    all_z1 = jax.lax.all_gather(local_z1, axis_name, tiled=True)        # (N, D)
    all_z2 = jax.lax.all_gather(local_z2, axis_name, tiled=True)        # (N, D)
    keys = jnp.concatenate([all_z1, all_z2], axis=0)                    # (2N, D)
    offset = jax.lax.axis_index(axis_name) * local_z1.shape[0]
    losses, correct = _anchor_losses(local_z1, local_z2, keys, offset, temperature)
    loss = jax.lax.psum(jnp.sum(losses), axis_name) / num_anchors
    accuracy = jax.lax.psum(jnp.sum(correct), axis_name) / num_anchors
    return loss, accuracy

  return per_shard(z1, z2)
