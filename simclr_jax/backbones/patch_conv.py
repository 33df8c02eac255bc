"""Convolutions as a patch extraction times one matmul: a CPU-only alternative to XLA's
convolution op (`config.conv_algorithm = "patches"`).

XLA's CPU backend runs its convolution op, and especially that op's gradients, far below the
machine's matmul rate; the same k x k convolution written as k*k shifted, strided slices
concatenated on the channel axis (B, H', W', k*k*C) times the (k*k*C, O) kernel is one large
matmul, whose gradients are matmuls and slice-adds as well. Numerically it is the same sum
in another order. TPU and GPU compile XLA's convolution well: keep the default there.

`conv_general_dilated` below has `jax.lax.conv_general_dilated`'s signature, for
`nnx.Conv(conv_general_dilated=...)`: parameters, their names and layout are unchanged, so
checkpoints move freely between the two algorithms.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

ALGORITHMS = ("xla", "patches")


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         precision=None, preferred_element_type=None,
                         out_sharding=None) -> jax.Array:
  """lhs (B, H, W, C) NHWC, rhs (kh, kw, C, O) HWIO, explicit padding -> (B, H', W', O).

  Cases other than an undilated, ungrouped 2-D NHWC / HWIO convolution with explicit
  padding go to `jax.lax.conv_general_dilated` unchanged.
  """
  plain = (lhs.ndim == 4 and feature_group_count == 1 and not isinstance(padding, str)
           and all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
           and _is_nhwc_hwio(dimension_numbers))
  if not plain:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision,
        preferred_element_type=preferred_element_type, out_sharding=out_sharding)
  kh, kw, channels, out_features = rhs.shape
  (sh, sw), ((top, bottom), (left, right)) = window_strides, padding
  padded = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  out_h = (padded.shape[1] - kh) // sh + 1
  out_w = (padded.shape[2] - kw) // sw + 1
  # (B, H', W', kh*kw*C) in HWIO order: window offset (i, j) outer, channel inner.
  columns = [padded[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
             for i in range(kh) for j in range(kw)]
  patches = columns[0] if len(columns) == 1 else jnp.concatenate(columns, axis=-1)
  return jnp.einsum("bhwp,po->bhwo", patches, rhs.reshape(kh * kw * channels, out_features),
                    precision=precision, preferred_element_type=preferred_element_type,
                    out_sharding=out_sharding)


def _is_nhwc_hwio(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers):
    # NHWC: batch 0, feature 3, spatial (1, 2); HWIO: out 3, in 2, spatial (0, 1).
    return (tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
            and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
            and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))
  return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")
