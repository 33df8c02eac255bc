"""ResNet backbones (He et al., 2016) in Flax NNX: (B, H, W, 3) -> (B, num_features), and
their weights as torchvision's ResNets (`pytorch_weights`).

Layouts are NHWC. Parameter counts match torchvision's ResNets (convolutions without
bias, BatchNorm with scale and bias): ResNet-50's trunk has 23,508,032 parameters.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simclr_jax import config_checks
from simclr_jax.backbones import contract, patch_conv

# Blocks per stage for each depth (He et al., 2016, Table 1).
STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
BOTTLENECK_DEPTHS = (50, 101, 152)

# torchvision initialises convolutions with kaiming_normal_(mode='fan_out', relu).
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _batch_norm(features: int, rngs: nnx.Rngs, dtype=jnp.float32,
                zero_scale: bool = False) -> nnx.BatchNorm:
  # PyTorch's BatchNorm2d defaults: momentum 0.1 (0.9 in Flax's convention), eps 1e-5.
  # Statistics are reduced in float32 whatever `dtype` (Flax's BatchNorm does so).
  scale_init = nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init()
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype,
                       scale_init=scale_init, rngs=rngs)


def _conv(in_features: int, out_features: int, kernel: int, strides: int,
          rngs: nnx.Rngs, dtype=jnp.float32, algorithm: str = "xla") -> nnx.Conv:
  # 'patches': the same parameters, computed as patches x matmul (patch_conv.py; CPU).
  lowering = (patch_conv.conv_general_dilated if algorithm == "patches"
              else jax.lax.conv_general_dilated)
  return nnx.Conv(in_features, out_features, (kernel, kernel), strides=(strides, strides),
                  padding=[(kernel // 2, kernel // 2)] * 2, use_bias=False,
                  kernel_init=conv_init, dtype=dtype, rngs=rngs,
                  conv_general_dilated=lowering)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""
  expansion = 1

  def __init__(self, in_features: int, features: int, strides: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32, zero_init_residual: bool = False, conv_algorithm="xla"):
    out = features * self.expansion
    self.conv1 = _conv(in_features, features, 3, strides, rngs, dtype, conv_algorithm)
    self.bn1 = _batch_norm(features, rngs, dtype)
    self.conv2 = _conv(features, out, 3, 1, rngs, dtype, conv_algorithm)
    self.bn2 = _batch_norm(out, rngs, dtype, zero_scale=zero_init_residual)
    self.shortcut = _Projection(in_features, out, strides, rngs, dtype, conv_algorithm) if (
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
               dtype=jnp.float32, zero_init_residual: bool = False, conv_algorithm="xla"):
    out = features * self.expansion
    self.conv1 = _conv(in_features, features, 1, 1, rngs, dtype, conv_algorithm)
    self.bn1 = _batch_norm(features, rngs, dtype)
    self.conv2 = _conv(features, features, 3, strides, rngs, dtype, conv_algorithm)
    self.bn2 = _batch_norm(features, rngs, dtype)
    self.conv3 = _conv(features, out, 1, 1, rngs, dtype, conv_algorithm)
    self.bn3 = _batch_norm(out, rngs, dtype, zero_scale=zero_init_residual)
    self.shortcut = _Projection(in_features, out, strides, rngs, dtype, conv_algorithm) if (
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
               dtype=jnp.float32, conv_algorithm: str = "xla"):
    self.conv = _conv(in_features, out_features, 1, strides, rngs, dtype, conv_algorithm)
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
    zero_init_residual: the last BatchNorm's scale in each residual block starts at zero,
      so each block starts as the identity (Goyal et al., 2017; the official SimCLR code's
      default). torchvision's default is False (scale 1).
    dtype: what convolutions and BatchNorm compute in (bfloat16 for mixed precision);
      parameters and statistics stay float32, and the pooled features are float32.
    conv_algorithm: 'xla' (XLA's convolution op) or 'patches' (patches x matmul, the same
      parameters and sums: an option for CPUs, see patch_conv.py).
  """

  def __init__(self, depth: int = 50, width_multiplier: float = 1.0,
               small_image_stem: bool = False, zero_init_residual: bool = False, *,
               rngs: nnx.Rngs, dtype=jnp.float32, conv_algorithm: str = "xla"):
    if depth not in STAGE_SIZES:
      raise ValueError(f"ResNet depth must be one of {sorted(STAGE_SIZES)}, got {depth}.")
    block_cls = BottleneckBlock if depth in BOTTLENECK_DEPTHS else BasicBlock
    base = max(1, int(round(64 * width_multiplier)))
    self.small_image_stem = small_image_stem
    self.stem_conv = _conv(3, base, 3 if small_image_stem else 7,
                           1 if small_image_stem else 2, rngs, dtype, conv_algorithm)
    self.stem_bn = _batch_norm(base, rngs, dtype)
    blocks = []
    in_features = base
    for stage, num_blocks in enumerate(STAGE_SIZES[depth]):
      features = base * 2**stage
      for index in range(num_blocks):
        strides = 2 if stage > 0 and index == 0 else 1
        blocks.append(block_cls(in_features, features, strides, rngs=rngs, dtype=dtype,
                                zero_init_residual=zero_init_residual,
                                conv_algorithm=conv_algorithm))
        in_features = features * block_cls.expansion
    self.blocks = nnx.List(blocks)
    self.num_features = in_features

  def __call__(self, x: jax.Array, train: bool = True, rngs: nnx.Rngs | None = None
               ) -> jax.Array:
    """x: (B, H, W, 3) -> (B, num_features) float32; `train`: BatchNorm's batch statistics
    (and their running averages updated). `rngs`: the backbone contract's randomness, unused
    (a ResNet has no stochastic layer)."""
    del rngs
    x = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    if not self.small_image_stem:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x, train)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def create(model_config, rngs: nnx.Rngs, dtype=jnp.float32,
           conv_algorithm: str = "xla") -> ResNet:
  """The ResNet that `config.model` describes."""
  return ResNet(model_config.depth, model_config.width_multiplier,
                model_config.small_image_stem, model_config.zero_init_residual, rngs=rngs,
                dtype=dtype, conv_algorithm=conv_algorithm)


def model_fields(model_config) -> tuple[str, ...]:
  """The config fields that shape a ResNet (not the other families' blocks)."""
  del model_config
  return ("model.name", "model.depth", "model.width_multiplier", "model.small_image_stem",
          "model.zero_init_residual")


def check_config(config) -> None:
  """Raises ConfigError for a `config.model` this family cannot build, or views it
  would shrink to nothing."""
  model = config.model
  config_checks.require(model.depth in STAGE_SIZES,
                        f"model.depth must be one of {sorted(STAGE_SIZES)}, got {model.depth}.")
  config_checks.require(model.width_multiplier > 0,
                        f"model.width_multiplier must be > 0, got {model.width_multiplier}.")
  minimum = downsampling_factor(model.small_image_stem)
  stem = "small-image" if model.small_image_stem else "ImageNet"
  config_checks.require(
      config.augment.image_size >= minimum,
      f"augment.image_size={config.augment.image_size} is too small for the ResNet with "
      f"the {stem} stem, which downsamples by {minimum}: use at least {minimum}"
      + ("" if model.small_image_stem else
         " (or --config.model.small_image_stem=True for images down to 8 px)") + ".")


def describe(model_config) -> str:
  """'resnet50' for torchvision's layers, else what differs (width, stem)."""
  name = f"resnet{model_config.depth}"
  if torchvision_mismatch(model_config) is None:
    return name
  stem = ("small-image stem (3x3 stride-1 convolution, no max-pool)"
          if model_config.small_image_stem else "ImageNet stem (7x7 stride-2 convolution, "
          "3x3 stride-2 max-pool)")
  width = max(1, int(round(64 * model_config.width_multiplier)))
  return f"{name}, width x{model_config.width_multiplier} ({width} stem channels), {stem}"


# --------------------------------------------------------------- as torchvision's ResNets

# This project's BatchNorm variables -> torchvision's BatchNorm2d names.
BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def torchvision_mismatch(model_config) -> str | None:
  """None when torchvision's `resnet{depth}` has exactly this encoder's layers, else why
  not (one sentence)."""
  if model_config.depth not in STAGE_SIZES:
    return f"torchvision has no ResNet-{model_config.depth}."
  if model_config.width_multiplier != 1.0:
    return (f"width_multiplier={model_config.width_multiplier}: torchvision's ResNets are "
            f"width 1 (its wide_resnet* widen only the bottleneck's inner layers).")
  if model_config.small_image_stem:
    return ("the small-image stem (3x3 stride-1 convolution, no max-pool) is not "
            "torchvision's (7x7 stride-2 convolution and 3x3 max-pool).")
  return None


def torchvision_name_table(depth: int) -> list[tuple[tuple[Any, ...], str, str]]:
  """(this project's module path, torchvision's module name, 'conv' or 'bn') for every
  layer of torchvision's `resnet{depth}` but `fc`, following its ResNet._make_layer: a
  stage's first block has a `downsample` (1x1 conv, BatchNorm) when it is strided or
  changes the width."""
  bottleneck = depth in BOTTLENECK_DEPTHS
  expansion, num_convs = (4, 3) if bottleneck else (1, 2)
  table = [(("stem_conv",), "conv1", "conv"), (("stem_bn",), "bn1", "bn")]
  in_planes, index = 64, 0
  for stage, num_blocks in enumerate(STAGE_SIZES[depth]):
    planes = 64 * 2**stage
    for block in range(num_blocks):
      prefix, path = f"layer{stage + 1}.{block}", ("blocks", index)
      for k in range(1, num_convs + 1):
        table += [((*path, f"conv{k}"), f"{prefix}.conv{k}", "conv"),
                  ((*path, f"bn{k}"), f"{prefix}.bn{k}", "bn")]
      strides = 2 if stage > 0 and block == 0 else 1
      if block == 0 and (strides != 1 or in_planes != planes * expansion):
        table += [((*path, "shortcut", "conv"), f"{prefix}.downsample.0", "conv"),
                  ((*path, "shortcut", "bn"), f"{prefix}.downsample.1", "bn")]
      in_planes, index = planes * expansion, index + 1
  return table


def _get(tree, path: tuple[Any, ...]):
  for key in path:
    tree = tree[key]
  return tree


def torchvision_state_dict(params, batch_stats, depth: int, step: int) -> dict[str, np.ndarray]:
  """The encoder's params and batch_stats (this project's nested dicts) as torchvision's
  `resnet{depth}` state_dict without `fc`: conv kernels (kh, kw, in, out) -> weight
  (out, in, kh, kw); BatchNorm scale, bias, mean, var -> weight, bias, running_mean,
  running_var (C,) float32, and num_batches_tracked () int64 = `step`."""
  tensors = {}
  for path, name, kind in torchvision_name_table(depth):
    if kind == "conv":
      kernel = np.asarray(_get(params, path)["kernel"], np.float32)
      tensors[f"{name}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
      continue
    variables = {**_get(params, path), **_get(batch_stats, path)}
    for ours, theirs in BN_NAMES.items():
      tensors[f"{name}.{theirs}"] = np.asarray(variables[ours], np.float32)
    tensors[f"{name}.num_batches_tracked"] = np.array(step, np.int64)
  return tensors


def pytorch_weights(model_config, params, batch_stats, step: int, image_size: int):
  """The backbone contract's export: (torchvision's model, its state_dict without `fc`,
  the head to replace) when torchvision has these layers, else the reason it has not."""
  del image_size  # torchvision's ResNets take any size.
  reason = torchvision_mismatch(model_config)
  if reason is not None:
    return reason
  return contract.PyTorchWeights(
      library="torchvision", head="fc",
      constructor=f"torchvision.models.resnet{model_config.depth}()",
      tensors=torchvision_state_dict(params, batch_stats, model_config.depth, step))
