"""ResNet encoders and the SimCLR projection head, in Flax NNX.

Layouts are NHWC. Parameter counts match torchvision's ResNets (convolutions without
bias, BatchNorm with scale and bias): ResNet-50's trunk has 23,508,032 parameters.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# Blocks per stage for each depth (He et al., 2016, Table 1).
STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
BOTTLENECK_DEPTHS = (50, 101, 152)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_input(images: jax.Array, normalize: bool) -> jax.Array:
  """uint8 (..., H, W, 3) images from the input pipeline -> float32 model input in [0, 1],
  or normalised with the ImageNet mean and std (torchvision's ToTensor + Normalize). Runs
  inside the jit-compiled steps, on the accelerator."""
  images = images.astype(jnp.float32) / 255.0
  if normalize:
    images = (images - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)
  return images


# torchvision initialises convolutions with kaiming_normal_(mode='fan_out', relu).
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _batch_norm(features: int, rngs: nnx.Rngs, dtype=jnp.float32) -> nnx.BatchNorm:
  # PyTorch's BatchNorm2d defaults: momentum 0.1 (0.9 in Flax's convention), eps 1e-5.
  # Statistics are reduced in float32 whatever `dtype` (Flax's BatchNorm does so).
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


def _conv(in_features: int, out_features: int, kernel: int, strides: int,
          rngs: nnx.Rngs, dtype=jnp.float32) -> nnx.Conv:
  return nnx.Conv(in_features, out_features, (kernel, kernel), strides=(strides, strides),
                  padding=[(kernel // 2, kernel // 2)] * 2, use_bias=False,
                  kernel_init=conv_init, dtype=dtype, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""
  expansion = 1

  def __init__(self, in_features: int, features: int, strides: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    out = features * self.expansion
    self.conv1 = _conv(in_features, features, 3, strides, rngs, dtype)
    self.bn1 = _batch_norm(features, rngs, dtype)
    self.conv2 = _conv(features, out, 3, 1, rngs, dtype)
    self.bn2 = _batch_norm(out, rngs, dtype)
    self.shortcut = _Projection(in_features, out, strides, rngs, dtype) if (
        strides != 1 or in_features != out) else None

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = self.bn2(self.conv2(y), use_running_average=not train)
    residual = x if self.shortcut is None else self.shortcut(x, train)
    return nnx.relu(y + residual)


class BottleneckBlock(nnx.Module):
  """1x1 reduce, 3x3 (strided, as in torchvision's ResNet v1.5), 1x1 expand."""
  expansion = 4

  def __init__(self, in_features: int, features: int, strides: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    out = features * self.expansion
    self.conv1 = _conv(in_features, features, 1, 1, rngs, dtype)
    self.bn1 = _batch_norm(features, rngs, dtype)
    self.conv2 = _conv(features, features, 3, strides, rngs, dtype)
    self.bn2 = _batch_norm(features, rngs, dtype)
    self.conv3 = _conv(features, out, 1, 1, rngs, dtype)
    self.bn3 = _batch_norm(out, rngs, dtype)
    self.shortcut = _Projection(in_features, out, strides, rngs, dtype) if (
        strides != 1 or in_features != out) else None

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = nnx.relu(self.bn2(self.conv2(y), use_running_average=not train))
    y = self.bn3(self.conv3(y), use_running_average=not train)
    residual = x if self.shortcut is None else self.shortcut(x, train)
    return nnx.relu(y + residual)


class _Projection(nnx.Module):
  """1x1 strided convolution + BatchNorm on the shortcut when shapes change."""

  def __init__(self, in_features: int, out_features: int, strides: int, rngs: nnx.Rngs,
               dtype=jnp.float32):
    self.conv = _conv(in_features, out_features, 1, strides, rngs, dtype)
    self.bn = _batch_norm(out_features, rngs, dtype)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return self.bn(self.conv(x), use_running_average=not train)


def downsampling_factor(small_image_stem: bool) -> int:
  """How much a ResNet shrinks its input before the pooling: the three strided stages (8),
  times the ImageNet stem's stride-2 convolution and max-pool (4). Images smaller than this
  reach the last stage as less than one pixel of image (the rest is padding)."""
  return 8 if small_image_stem else 32


class ResNet(nnx.Module):
  """ResNet trunk up to global average pooling: (B, H, W, 3) -> (B, num_features).

  Args:
    depth: 18, 34, 50, 101 or 152.
    width_multiplier: scales every stage's width (64 * m at the stem).
    small_image_stem: a 3x3 stride-1 stem without max-pooling (CIFAR-style), for images
      of 32 px or less; otherwise the ImageNet stem (7x7 stride 2 + 3x3 max-pool).
    dtype: what convolutions and BatchNorm compute in (bfloat16 for mixed precision);
      parameters and statistics stay float32, and the pooled features are float32.
  """

  def __init__(self, depth: int = 50, width_multiplier: float = 1.0,
               small_image_stem: bool = False, *, rngs: nnx.Rngs, dtype=jnp.float32):
    if depth not in STAGE_SIZES:
      raise ValueError(f"ResNet depth must be one of {sorted(STAGE_SIZES)}, got {depth}.")
    block_cls = BottleneckBlock if depth in BOTTLENECK_DEPTHS else BasicBlock
    base = max(1, int(round(64 * width_multiplier)))
    self.small_image_stem = small_image_stem
    self.stem_conv = _conv(3, base, 3 if small_image_stem else 7,
                           1 if small_image_stem else 2, rngs, dtype)
    self.stem_bn = _batch_norm(base, rngs, dtype)
    blocks = []
    in_features = base
    for stage, num_blocks in enumerate(STAGE_SIZES[depth]):
      features = base * 2**stage
      for index in range(num_blocks):
        strides = 2 if stage > 0 and index == 0 else 1
        blocks.append(block_cls(in_features, features, strides, rngs=rngs, dtype=dtype))
        in_features = features * block_cls.expansion
    self.blocks = nnx.List(blocks)
    self.num_features = in_features

  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    x = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    if not self.small_image_stem:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x, train)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class ProjectionHead(nnx.Module):
  """MLP g(h): Linear(+BN)+ReLU for each hidden width, then a final Linear(+BN).

  widths=(512, 128) on 2048-d input is the seed's 2048-512-128 head (with biases, no BN);
  widths=(2048, 2048, 128) with batch_norm=True is SimCLR v2's 3-layer head, where the
  linear layers drop their biases (BN's shift replaces them) and the last BN has no shift.
  `dtype` as ResNet's; the embeddings are returned as float32 (the loss is float32).
  """

  def __init__(self, in_features: int, widths: Sequence[int], batch_norm: bool, *,
               rngs: nnx.Rngs, dtype=jnp.float32):
    if not widths:
      raise ValueError("The projection head needs at least one layer width.")
    self.batch_norm = batch_norm
    dims = [in_features, *widths]
    self.linears = nnx.List([nnx.Linear(d_in, d_out, use_bias=not batch_norm, dtype=dtype,
                                        rngs=rngs)
                             for d_in, d_out in zip(dims[:-1], dims[1:])])
    if batch_norm:
      last = len(widths) - 1
      self.norms = nnx.List([
          nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, use_bias=i != last, dtype=dtype,
                        rngs=rngs)
          for i, width in enumerate(widths)])

  def __call__(self, h: jax.Array, train: bool = True) -> jax.Array:
    """(B, in_features) -> (B, widths[-1])."""
    for i, linear in enumerate(self.linears):
      h = linear(h)
      if self.batch_norm:
        h = self.norms[i](h, use_running_average=not train)
      if i < len(self.linears) - 1:
        h = nnx.relu(h)
    return h.astype(jnp.float32)


class SimCLRModel(nnx.Module):
  """Encoder f (ResNet trunk) followed by projection head g; optionally an online linear
  probe, trained on stop-gradient features during pretraining to watch label accuracy."""

  def __init__(self, encoder: ResNet, head: ProjectionHead, probe: nnx.Linear | None = None):
    self.encoder = encoder
    self.head = head
    self.probe = probe

  def __call__(self, images: jax.Array, train: bool = True) -> tuple[jax.Array, jax.Array]:
    """(B, H, W, 3) -> (features h: (B, num_features), embeddings z: (B, widths[-1]))."""
    features = self.encoder(images, train)
    return features, self.head(features, train)


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(model_config, rngs: nnx.Rngs, probe_classes: int = 0,
                 compute_dtype: str = "float32") -> SimCLRModel:
  """Builds the SimCLR model from `config.model`, with an online probe over
  `probe_classes` classes if that is > 0; encoder and head compute in `compute_dtype`
  (config.compute_dtype), the probe in float32 on float32 features."""
  dtype = COMPUTE_DTYPES[compute_dtype]
  encoder = ResNet(model_config.depth, model_config.width_multiplier,
                   model_config.small_image_stem, rngs=rngs, dtype=dtype)
  head = ProjectionHead(encoder.num_features, tuple(model_config.head_widths),
                        model_config.head_batch_norm, rngs=rngs, dtype=dtype)
  probe = nnx.Linear(encoder.num_features, probe_classes, rngs=rngs) if probe_classes else None
  return SimCLRModel(encoder, head, probe)


def count_params(module: nnx.Module) -> int:
  """Number of trainable (nnx.Param) scalars in `module`."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


