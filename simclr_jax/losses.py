"""NT-Xent (normalised temperature-scaled cross entropy), on one device and across a mesh.

For N images with two views, the 2N embeddings are the anchors; each anchor's positive is
the other view of its image (index i <-> i + N in the concatenation [z1; z2]), the other
2N - 2 embeddings are its negatives and the anchor itself is excluded. The loss is the mean
cross entropy over the 2N anchors, as in the seed's `nt_xent_loss`.

The other methods' objectives follow, each as a pure function on one device and, where the
loss couples examples across the batch, a shard_map form equal to it in value and gradients:
BYOL's normalised regression (`byol_loss`), MoCo v3's InfoNCE (`infonce_loss`,
`sharded_infonce`) and VICReg (`vicreg_loss`, `sharded_vicreg`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P


def l2_normalize(x: jax.Array) -> jax.Array:
  """Rows of x scaled to unit L2 norm."""
  # torch.nn.functional.normalize: x / max(||x||, 1e-12). Written with the squared norm so
  # that an all-zero row has a finite gradient (d sqrt/dx is infinite at 0).
  squared_norm = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, 1e-24))


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
  logits = anchors @ keys.T / temperature                               # (2n, 2N)
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
  z1, z2 = l2_normalize(z1), l2_normalize(z2)
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
    local_z1, local_z2 = l2_normalize(local_z1), l2_normalize(local_z2)
    all_z1 = jax.lax.all_gather(local_z1, axis_name, tiled=True)        # (N, D)
    all_z2 = jax.lax.all_gather(local_z2, axis_name, tiled=True)        # (N, D)
    keys = jnp.concatenate([all_z1, all_z2], axis=0)                    # (2N, D)
    offset = jax.lax.axis_index(axis_name) * local_z1.shape[0]
    losses, correct = _anchor_losses(local_z1, local_z2, keys, offset, temperature)
    loss = jax.lax.psum(jnp.sum(losses), axis_name) / num_anchors
    accuracy = jax.lax.psum(jnp.sum(correct), axis_name) / num_anchors
    return loss, accuracy

  return per_shard(z1, z2)


# ---------------------------------------------------------------------------------------
# BYOL.
# ---------------------------------------------------------------------------------------


def byol_loss(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """BYOL's regression loss, one direction: mean over rows of ||p/||p|| - z/||z||||^2.

  For unit rows this is 2 - 2 cos(p, z) (BYOL's `regression_loss`), in [0, 4]. It is written
  as the squared difference rather than 2 - 2 cos, which would lose the small values to
  cancellation in float32 once the online network predicts the target well. BYOL's
  objective is the sum of both directions, byol_loss(q(z1), z2') + byol_loss(q(z2), z1'),
  with z' from the target (momentum) network.

  Gradients flow into both arguments: this function does not stop them. BYOL's targets must
  be `jax.lax.stop_gradient`-ed by the caller (or come from parameters that are not
  differentiated).

  Sharding: the loss is a mean of per-row terms with no interaction between rows, so under
  jit with inputs sharded on the batch GSPMD computes it shard-locally followed by one
  scalar all-reduce; no shard_map form is needed.

  Args:
    predictions: (N, D) online predictions (normalised here).
    targets: (N, D) target projections (normalised here).

  Returns:
    Scalar mean over the N rows.
  """
  p, z = l2_normalize(predictions), l2_normalize(targets)
  return jnp.mean(jnp.sum(jnp.square(p - z), axis=-1))


# ---------------------------------------------------------------------------------------
# InfoNCE as in MoCo v3.
# ---------------------------------------------------------------------------------------


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
  logits = local_queries @ keys.T / temperature                          # (n, N)
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
  q, k = l2_normalize(queries), l2_normalize(keys)
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
    local_queries, local_keys = l2_normalize(local_queries), l2_normalize(local_keys)
    all_keys = jax.lax.all_gather(local_keys, axis_name, tiled=True)      # (N, D)
    offset = jax.lax.axis_index(axis_name) * local_queries.shape[0]
    losses, correct = _query_losses(local_queries, all_keys, offset, temperature)
    loss = 2 * temperature * jax.lax.psum(jnp.sum(losses), axis_name) / num_queries
    accuracy = jax.lax.psum(jnp.sum(correct), axis_name) / num_queries
    return loss, accuracy

  return per_shard(queries, keys)


# ---------------------------------------------------------------------------------------
# VICReg.
# ---------------------------------------------------------------------------------------

# Added to the variance under the square root (VICReg's `torch.sqrt(x.var(dim=0) + 0.0001)`).
_VICREG_EPSILON = 1e-4


def _variance_covariance_sums(centred: jax.Array, columns: jax.Array,
                              first_column: jax.Array | int,
                              num_features: int) -> tuple[jax.Array, jax.Array]:
  """VICReg's variance hinge and squared off-diagonal covariance, summed over some columns.

  Args:
    centred: (N, D) embeddings of the whole batch, minus their column means.
    columns: (N, w) a block of `centred`'s columns, starting at column `first_column`; on
      one device all of them. Columns at index >= num_features are padding, ignored.
    first_column: index of the block's first column.
    num_features: D, the number of real columns.

  Returns:
    sum over the block's columns d of relu(1 - std_d), and sum over the block's rows of the
    covariance matrix of the squared off-diagonal entries.
  """
  n = centred.shape[0]
  index = first_column + jnp.arange(columns.shape[1])                    # (w,)
  # torch's var is unbiased (ddof=1), as is the covariance's 1 / (N - 1).
  std = jnp.sqrt(jnp.sum(jnp.square(columns), axis=0) / (n - 1) + _VICREG_EPSILON)
  hinge = jnp.sum(jnp.where(index < num_features, jax.nn.relu(1.0 - std), 0.0))
  covariance = columns.T @ centred / (n - 1)                             # (w, D)
  diagonal = index[:, None] == jnp.arange(centred.shape[1])[None, :]
  off_diagonal = jnp.sum(jnp.square(jnp.where(diagonal, 0.0, covariance)))
  return hinge, off_diagonal


def vicreg_terms(z1: jax.Array, z2: jax.Array) -> dict[str, jax.Array]:
  """VICReg's three unweighted terms on one device.

  Exactly facebookresearch/vicreg `VICReg.forward` (main_vicreg.py):
    invariance = mean over the N * D entries of (z1 - z2)^2   (F.mse_loss),
    variance   = mean_d relu(1 - std(z1)_d) / 2 + the same for z2,
                 std_d = sqrt(unbiased variance of column d + 1e-4),
    covariance = sum of squared off-diagonal entries of cov(z1), divided by D, + the same
                 for z2, cov = centred^T centred / (N - 1).

  Args:
    z1, z2: (N, D) embeddings (expander outputs) of the two views, N >= 2.

  Returns:
    {"invariance", "variance", "covariance"}: scalars.
  """
  num_features = z1.shape[1]
  invariance = jnp.mean(jnp.square(z1 - z2))
  variance = covariance = 0.0
  for z in (z1, z2):
    centred = z - jnp.mean(z, axis=0)
    hinge, off_diagonal = _variance_covariance_sums(centred, centred, 0, num_features)
    variance += hinge / (2 * num_features)
    covariance += off_diagonal / num_features
  return {"invariance": invariance, "variance": variance, "covariance": covariance}


def combine_vicreg_terms(terms: dict[str, jax.Array], invariance: float = 25.0,
                         variance: float = 25.0, covariance: float = 1.0) -> jax.Array:
  """VICReg's loss from its terms; the defaults are VICReg's sim, std and cov coefficients."""
  return (invariance * terms["invariance"] + variance * terms["variance"] +
          covariance * terms["covariance"])


def vicreg_loss(z1: jax.Array, z2: jax.Array, invariance: float = 25.0,
                variance: float = 25.0, covariance: float = 1.0) -> jax.Array:
  """VICReg's scalar loss on one device for (N, D) embeddings (see `vicreg_terms`)."""
  return combine_vicreg_terms(vicreg_terms(z1, z2), invariance, variance, covariance)


def sharded_vicreg_terms(z1: jax.Array, z2: jax.Array, mesh: Mesh,
                         axis_name: str = "data") -> dict[str, jax.Array]:
  """`vicreg_terms` over embeddings sharded on `axis_name`, statistics over the global batch.

  As VICReg's FullGatherLayer, the variance and covariance are those of the whole batch.
  Each of the k devices
    - computes the invariance term of its own n = N/k rows (a local sum, divided by N * D);
    - all-gathers both views (N, D) (the communication: 2 N D values, and a reduce-scatter
      of the same size in the backward pass), centres them with the global column means
      and takes its own block of w = ceil(D/k) columns (gathering N D values per view is
      less traffic than psum-ing local D x D Gram matrices while N < D, as in VICReg's
      N = 2048, D = 8192);
    - computes the variance hinge of those w columns and the (w, D) rows of each covariance
      matrix, so that the D x D covariance is never built on one device and the N D^2 / k
      multiply-adds are split over the devices rather than repeated (D = 8192: a (1024,
      8192) block per view on 8 devices);
  and the per-device partial sums are psum-ed (three scalars). Each device returns only its
  additive share, so the replicated result is a psum of shares and each share is
  differentiated once, back through that device's gathers (whose transpose, a
  reduce-scatter, sums the shares' gradients onto the rows' owners): exact without relying
  on how shard_map transposes a replicated output. The official FullGatherLayer instead
  computes the whole loss on every rank, repeating the D x D covariance k times. Equal in
  value and gradients to `vicreg_terms` on the same global batch.

  Args:
    z1, z2: (N, D) global arrays sharded along N on `axis_name`.
    mesh: the device mesh.

  Returns:
    {"invariance", "variance", "covariance"}: replicated scalars.
  """
  num_examples, num_features = z1.shape
  num_devices = mesh.shape[axis_name]
  width = -(-num_features // num_devices)                                # ceil(D / k)
  padding = width * num_devices - num_features

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(axis_name), P(axis_name)),
                     out_specs=P())
  def per_shard(local_z1, local_z2):
    invariance = jnp.sum(jnp.square(local_z1 - local_z2)) / (num_examples * num_features)
    first_column = jax.lax.axis_index(axis_name) * width
    variance = covariance = 0.0
    for local_z in (local_z1, local_z2):
      z = jax.lax.all_gather(local_z, axis_name, tiled=True)             # (N, D)
      centred = z - jnp.mean(z, axis=0)
      # Zero columns pad D to k * w; `_variance_covariance_sums` ignores their hinge and
      # their covariance rows are zero.
      padded = jnp.pad(centred, ((0, 0), (0, padding)))
      columns = jax.lax.dynamic_slice_in_dim(padded, first_column, width, axis=1)
      hinge, off_diagonal = _variance_covariance_sums(centred, columns, first_column,
                                                      num_features)
      variance += hinge / (2 * num_features)
      covariance += off_diagonal / num_features
    terms = {"invariance": invariance, "variance": variance, "covariance": covariance}
    return jax.lax.psum(terms, axis_name)

  return per_shard(z1, z2)


def sharded_vicreg(z1: jax.Array, z2: jax.Array, mesh: Mesh, axis_name: str = "data",
                   invariance: float = 25.0, variance: float = 25.0,
                   covariance: float = 1.0) -> jax.Array:
  """VICReg's scalar loss over a sharded batch (see `sharded_vicreg_terms`)."""
  return combine_vicreg_terms(sharded_vicreg_terms(z1, z2, mesh, axis_name), invariance,
                              variance, covariance)
