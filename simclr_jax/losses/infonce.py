"""InfoNCE as in MoCo v3: queries against the other view's keys, on one device and across a
mesh (the keys gathered, gradients through the gather)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from simclr_jax.losses import normalize


def _query_losses(local_queries: jax.Array, keys: jax.Array, offset: jax.Array | int,
                  temperature: float) -> tuple[jax.Array, jax.Array]:
  """Scores n local queries against all N keys; query i's positive is key offset + i.

  Args:
    local_queries: (n, D) normalised queries.
    keys: (N, D) normalised keys of the whole batch.
    offset: global index of this shard's first query.
    temperature: softmax temperature tau.

  Returns:
    (n,) cross-entropy per query (without MoCo v3's 2 tau factor) and (n,) whether the
    positive key scored highest.
  """
  # HIGHEST: TPU's default precision would round the float32 embeddings to bfloat16 in
  # this matmul (about 3 significant digits of each cosine); the loss is float32 throughout.
  logits = jnp.matmul(local_queries, keys.T,
                      precision=jax.lax.Precision.HIGHEST) / temperature   # (n, N)
  labels = offset + jnp.arange(local_queries.shape[0])
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = jnp.argmax(logits, axis=-1) == labels
  return losses, correct


def infonce_loss(queries: jax.Array, keys: jax.Array, temperature: float) -> jax.Array:
  """MoCo v3's `contrastive_loss(q, k)` on one device (see `infonce_with_accuracy`)."""
  return infonce_with_accuracy(queries, keys, temperature)[0]


def infonce_with_accuracy(queries: jax.Array, keys: jax.Array,
                          temperature: float) -> tuple[jax.Array, jax.Array]:
  """(loss, top-1 accuracy) of MoCo v3's InfoNCE on one device.

  As facebookresearch/moco-v3 `MoCo.contrastive_loss`: logits = q k^T / tau for normalised
  q and k, the positive of query i is key i, the mean cross entropy is multiplied by 2 tau
  (MoCo v3's choice, which keeps the gradient scale independent of tau). MoCo v3's
  objective is the symmetrised sum infonce(q1, k2) + infonce(q2, k1), with the keys from
  the momentum encoder, stop-gradient-ed by the caller; gradients here flow into both.

  Args:
    queries: (N, D) raw queries (normalised here).
    keys: (N, D) raw keys (normalised here).
    temperature: tau > 0.

  Returns:
    (loss, fraction of queries whose positive key scored highest), scalars.
  """
  q, k = normalize.l2_normalize(queries), normalize.l2_normalize(keys)
  losses, correct = _query_losses(q, k, 0, temperature)
  return 2 * temperature * jnp.mean(losses), jnp.mean(correct)


def sharded_infonce(queries: jax.Array, keys: jax.Array, temperature: float, mesh: Mesh,
                    axis_name: str = "data") -> tuple[jax.Array, jax.Array]:
  """MoCo v3's InfoNCE over a batch sharded on `axis_name`, with (N/devices, N) logits.

  Each device normalises its own queries and keys, all-gathers the keys (N, D) (as MoCo
  v3's `concat_all_gather`, but differentiable: the gather's transpose is a reduce-scatter,
  so key gradients reach the device that holds each key), scores its local queries against
  all keys with labels axis_index * n + arange(n), and the per-query losses are psum-ed and
  divided by N. Each device returns only its share of the sum, so each share is
  differentiated once and the replicated (out_specs=P()) result's gradient is exact. Equal in value and gradients to `infonce_with_accuracy` on the same global batch.

  Args:
    queries, keys: (N, D) global arrays sharded along N on `axis_name`.
    temperature: tau > 0.
    mesh: the device mesh.

  Returns:
    (loss, top-1 accuracy), replicated scalars.
  """
  num_queries = queries.shape[0]

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(axis_name), P(axis_name)),
                     out_specs=(P(), P()))
  def per_shard(local_queries, local_keys):
    local_queries, local_keys = normalize.l2_normalize(local_queries), normalize.l2_normalize(local_keys)
    all_keys = jax.lax.all_gather(local_keys, axis_name, tiled=True)      # (N, D)
    offset = jax.lax.axis_index(axis_name) * local_queries.shape[0]
    losses, correct = _query_losses(local_queries, all_keys, offset, temperature)
    loss = 2 * temperature * jax.lax.psum(jnp.sum(losses), axis_name) / num_queries
    accuracy = jax.lax.psum(jnp.sum(correct), axis_name) / num_queries
    return loss, accuracy

  return per_shard(queries, keys)
