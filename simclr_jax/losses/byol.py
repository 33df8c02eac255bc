"""BYOL's normalised regression loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simclr_jax.losses import normalize


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
  p, z = normalize.l2_normalize(predictions), normalize.l2_normalize(targets)
  return jnp.mean(jnp.sum(jnp.square(p - z), axis=-1))
