"""VICReg's variance, invariance and covariance terms, on one device and across a mesh."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

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
  # At the backend's default precision (bfloat16 operands on TPU), unlike the contrastive
  # logits: this is VICReg's largest matmul (w x N x D, D = 8192), full float32 would add
  # about a sixth to a ResNet-50 step, and VICReg's own code computes it under fp16 autocast.
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
