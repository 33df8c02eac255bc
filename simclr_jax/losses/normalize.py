"""Rows scaled to unit L2 norm, as torch.nn.functional.normalize: the cosine geometry the
contrastive losses, BYOL's regression and the kNN share."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array) -> jax.Array:
  """Rows of x scaled to unit L2 norm."""
  # torch.nn.functional.normalize: x / max(||x||, 1e-12). Written with the squared norm so
  # that an all-zero row has a finite gradient (d sqrt/dx is infinite at 0).
  squared_norm = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, 1e-24))
