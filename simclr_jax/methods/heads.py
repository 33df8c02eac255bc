"""MLP heads on backbone features: projectors, predictors and expanders, in Flax NNX."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from simclr_jax import config_checks

# What normalises the last layer's output when `batch_norm` is on.
#   'scale': BatchNorm with a scale and no shift (SimCLR v2's head).
#   'standardize': BatchNorm with neither (MoCo v3's BatchNorm1d(affine=False)).
#   'none': no BatchNorm (BYOL's and VICReg's heads, MoCo v3's predictor).
LAST_NORMS = ("scale", "standardize", "none")


class MLP(nnx.Module):
  """Linear(+BN)+ReLU for each hidden width, then a final Linear (+ `last_norm`).

  widths=(512, 128) without BatchNorm on 2048-d input is the seed's 2048-512-128 head (with
  biases); widths=(2048, 2048, 128) with batch_norm=True is SimCLR v2's 3-layer head. Linear
  layers followed by BatchNorm drop their biases (the BatchNorm's shift replaces them); a
  last layer without BatchNorm has one only with `last_bias` (the official BYOL, MoCo v3
  and VICReg heads have none: their method files pass False). `dtype` is what the layers
  compute in; the output is float32 (the losses are float32).
  """

  def __init__(self, in_features: int, widths: Sequence[int], batch_norm: bool, *,
               rngs: nnx.Rngs, dtype=jnp.float32, last_norm: str = "scale",
               last_bias: bool = True):
    if not widths:
      raise ValueError("An MLP head needs at least one layer width.")
    if last_norm not in LAST_NORMS:
      raise ValueError(f"last_norm must be one of {LAST_NORMS}, got {last_norm!r}.")
    self.batch_norm = batch_norm
    last = len(widths) - 1
    self.last_normed = batch_norm and last_norm != "none"
    dims = [in_features, *widths]
    self.linears = nnx.List([
        nnx.Linear(d_in, d_out, use_bias=(not batch_norm or (i == last and not self.last_normed))
                   and (i != last or last_bias),
                   dtype=dtype, rngs=rngs)
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:]))])
    if batch_norm:
      self.norms = nnx.List([
          nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5,
                        use_bias=i != last, use_scale=i != last or last_norm == "scale",
                        dtype=dtype, rngs=rngs)
          for i, width in enumerate(widths[:len(widths) if self.last_normed else last])])

  def __call__(self, h: jax.Array, train: bool = True) -> jax.Array:
    """(B, in_features) -> (B, widths[-1])."""
    last = len(self.linears) - 1
    for i, linear in enumerate(self.linears):
      h = linear(h)
      if self.batch_norm and (i < last or self.last_normed):
        h = self.norms[i](h, use_running_average=not train)
      if i < last:
        h = nnx.relu(h)
    return h.astype(jnp.float32)


def check_widths(name: str, widths: Sequence[int]) -> None:
  """ConfigError unless `widths` (config field `name`) are one or more positive widths."""
  config_checks.require(len(widths) >= 1 and min(widths) > 0,
                        f"{name} must be positive widths, got {tuple(widths)}.")
