"""Vision Transformers (Dosovitskiy et al., 2021) in Flax NNX as MoCo v3 pretrains them:
(B, H, W, 3) -> (B, width), and their weights as timm's VisionTransformer (`pytorch_weights`).

The layers are timm's (huggingface/pytorch-image-models timm/models/vision_transformer.py at
aa4b585, "timm" below): a strided-convolution patch embedding, a class token, a position
table (MoCo v3's fixed 2-D sin-cos one or a learned one), pre-norm blocks (LayerNorm eps
1e-6, fused-qkv attention with bias, MLP ratio 4 with exact GELU, drop-path) and a final
LayerNorm on the class token ('cls'), or the mean of the patch tokens through `fc_norm`
('gap', timm's global_pool='avg'). Attribute names are timm's, so export is a rename and the
parameter counts are timm's without its classifier (ViT-S/16: 21,665,664 with a learned
table, 21,590,016 with the sin-cos one, which is not a parameter). Initialisation follows
MoCo v3's VisionTransformerMoCo (facebookresearch/moco-v3 vits.py:31-47).

Any image size divisible by the patch runs: the sin-cos table follows the patch grid, and a
learned table, made for `model.vit.pos_embed_image_size`'s grid, is resampled to another
grid as timm's `resample_abs_pos_embed` does (bicubic, antialiased).
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simclr_jax import config_checks
from simclr_jax.backbones import contract, patch_conv

# variant: (width, depth, heads). Ti/S/B are timm's vit_{tiny,small,base} (ViT-S has 6 heads
# there; MoCo v3's vit_small has 12, vits.py:115-118). 'mu' is for tests and the CPU demo:
# width 64 keeps it divisible by 4 (sin-cos) with 16-wide heads (a multiple of 8, as cuDNN
# wants), 4 heads so attention is multi-head, 4 blocks so the drop-path schedule and the
# layer-wise decay have layers to tell apart; about 0.2M parameters.
VARIANTS = {"mu": (64, 4, 4), "Ti": (192, 12, 3), "S": (384, 12, 6), "B": (768, 12, 12)}
POSITION_EMBEDDINGS = ("sincos", "learned")
POOLINGS = ("cls", "gap")
ATTENTIONS = ("xla", "cudnn")
MLP_RATIO = 4
LAYER_NORM_EPS = 1e-6  # timm's LayerNorm default (timm/layers/norm.py:78).
SINCOS_TEMPERATURE = 10_000.0  # MoCo v3's build_2d_sincos_position_embedding (vits.py:53).

# timm's registered names (vision_transformer.py:3105-3210) by (variant, patch size).
TIMM_NAMES = {("Ti", 16): "vit_tiny_patch16_224", ("S", 8): "vit_small_patch8_224",
              ("S", 16): "vit_small_patch16_224", ("S", 32): "vit_small_patch32_224",
              ("B", 8): "vit_base_patch8_224", ("B", 16): "vit_base_patch16_224",
              ("B", 32): "vit_base_patch32_224"}


# --------------------------------------------------------------------------- initialisers


def _uniform(bound: float):
  """U(-bound, bound), as torch's nn.init.uniform_(w, -bound, bound)."""

  def init(key, shape, dtype=jnp.float32, out_sharding=None):
    del out_sharding
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _qkv_init(key, shape, dtype=jnp.float32, out_sharding=None):
  """MoCo v3's qkv weight (vits.py:34-37): xavier-uniform with q, k and v counted as three
  (D, D) matrices, bound sqrt(6 / (3D / 3 + D)). shape: (D, 3D)."""
  del out_sharding
  width_in, width_out = shape
  return _uniform(math.sqrt(6.0 / (width_out // 3 + width_in)))(key, shape, dtype)


def _patch_embed_init(patch_size: int, width: int):
  """MoCo v3's patch embedding (vits.py:43-47): xavier-uniform over the flattened kernel,
  fan in 3 p^2 and fan out D (torch's xavier_uniform_ on the conv would count p^2 twice)."""
  return _uniform(math.sqrt(6.0 / (3 * patch_size**2 + width)))


def _pos_embed_init(key, shape, dtype=jnp.float32, out_sharding=None):
  """timm's learned table: trunc_normal_(std=.02) (vision_transformer.py:932), whose cut is
  at +-2 in value (timm/layers/weight_init.py:54), i.e. +-100 standard deviations."""
  del out_sharding
  std = 0.02
  return std * jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, dtype)


_linear_init = nnx.initializers.xavier_uniform()  # MoCo v3's Linear weights (vits.py:38-39).


# ------------------------------------------------------------------------- position tables


def sincos_table(grid_h: int, grid_w: int, width: int) -> np.ndarray:
  """MoCo v3's fixed table (vits.py:53-69): (1, 1 + grid_h * grid_w, width) float32, a zero
  row for the class token, then per patch [sin(a w), cos(a w), sin(a h), cos(a h)] with
  a = 1 / 10000^(k / (width / 4)), k < width / 4.

  Transcribed as written, torch.meshgrid's 'ij' indexing included (vits.py:57): patch m of
  the flattened table gets w = m // grid_h and h = m % grid_h, so on the square grids this
  project uses (image_size x image_size) the first half of the channels encodes the patch
  row and the second half its column.
  """
  if width % 4:
    raise ValueError(f"The sin-cos table needs a width divisible by 4, got {width}.")
  quarter = width // 4
  omega = 1.0 / SINCOS_TEMPERATURE**(np.arange(quarter, dtype=np.float32) / quarter)
  w, h = np.meshgrid(np.arange(grid_w, dtype=np.float32),
                     np.arange(grid_h, dtype=np.float32), indexing="ij")
  out_w, out_h = np.outer(w.ravel(), omega), np.outer(h.ravel(), omega)
  table = np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], axis=1)
  return np.concatenate([np.zeros((1, width), np.float32), table])[None].astype(np.float32)


def resample_table(table: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """A learned (1, 1 + h0 * w0, D) table (square h0 = w0) for another (h, w) patch grid:
  (1, 1 + h * w, D), the class token's row kept, the grid's rows resized as timm's
  resample_abs_pos_embed does (timm/layers/pos_embed.py:19-59: bicubic, antialias=True,
  in float32). jax's 'cubic' is the Keys kernel with a = -0.5, the one PyTorch's antialiased
  bicubic uses (PIL's)."""
  side = math.isqrt(table.shape[1] - 1)
  patches = table[0, 1:].astype(jnp.float32).reshape(side, side, table.shape[-1])
  if (side, side) != tuple(grid):
    patches = jax.image.resize(patches, (*grid, table.shape[-1]), "cubic", antialias=True)
  return jnp.concatenate([table[0, :1].astype(jnp.float32),
                          patches.reshape(-1, table.shape[-1])])[None]


# --------------------------------------------------------------------------------- layers


def _layer_norm(width: int, rngs: nnx.Rngs, dtype) -> nnx.LayerNorm:
  return nnx.LayerNorm(width, epsilon=LAYER_NORM_EPS, dtype=dtype, rngs=rngs)


def _linear(width_in: int, width_out: int, rngs: nnx.Rngs, dtype,
            kernel_init=_linear_init) -> nnx.Linear:
  return nnx.Linear(width_in, width_out, kernel_init=kernel_init,
                    bias_init=nnx.initializers.zeros_init(), dtype=dtype, rngs=rngs)


def drop_path(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  """timm's DropPath (timm/layers/drop.py:158-175): each example's residual branch x
  (B, ...) zeroed with probability `rate`, otherwise scaled by 1 / (1 - rate)."""
  keep = 1.0 - rate
  kept = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(kept, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


class Attention(nnx.Module):
  """timm's Attention: fused qkv Linear (bias), scaled dot-product attention per head,
  proj Linear. (B, T, D) -> (B, T, D)."""

  def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               implementation: str = "xla"):
    self.num_heads = num_heads
    self.implementation = implementation
    self.qkv = _linear(width, 3 * width, rngs, dtype, kernel_init=_qkv_init)
    self.proj = _linear(width, width, rngs, dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, tokens, width = x.shape
    # timm's reshape(B, N, 3, heads, head_dim): the 3D outputs are q | k | v, each by head.
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, width // self.num_heads)
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                       implementation=self.implementation)
    return self.proj(out.reshape(batch, tokens, width))


class Mlp(nnx.Module):
  """fc1 -> exact GELU -> fc2, hidden width 4 D (timm's Mlp, nn.GELU)."""

  def __init__(self, width: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.fc1 = _linear(width, MLP_RATIO * width, rngs, dtype)
    self.fc2 = _linear(MLP_RATIO * width, width, rngs, dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(nnx.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
  """Pre-norm transformer block (timm's Block): x + attn(norm1(x)), then x + mlp(norm2(x)),
  each branch through drop-path at `drop_path_rate` when training."""

  def __init__(self, width: int, num_heads: int, drop_path_rate: float, *, rngs: nnx.Rngs,
               dtype=jnp.float32, attention: str = "xla"):
    self.drop_path_rate = drop_path_rate
    self.norm1 = _layer_norm(width, rngs, dtype)
    self.attn = Attention(width, num_heads, rngs=rngs, dtype=dtype, implementation=attention)
    self.norm2 = _layer_norm(width, rngs, dtype)
    self.mlp = Mlp(width, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, keys: tuple[jax.Array, jax.Array] | None = None):
    """keys: two PRNG keys for drop-path, or None (no drop-path)."""
    branches = (lambda y: self.attn(self.norm1(y)), lambda y: self.mlp(self.norm2(y)))
    for index, branch in enumerate(branches):
      out = branch(x)
      if keys is not None:
        out = drop_path(out, self.drop_path_rate, keys[index])
      x = x + out
    return x


class VisionTransformer(nnx.Module):
  """ViT up to its pooled, normalised features: (B, H, W, 3) -> (B, width) float32.

  Args:
    width, depth, num_heads: the embedding width, number of blocks, heads per block.
    patch_size: the patch embedding's kernel and stride; H and W must be multiples of it.
    position_embedding: 'sincos' (MoCo v3's fixed table, not a parameter) or 'learned'
      (a parameter (1, 1 + N, width), N the patch count of `pos_embed_image_size`).
    pooling: 'cls' (final LayerNorm `norm`, then the class token) or 'gap' (the mean of the
      patch tokens, then LayerNorm `fc_norm`; timm's global_pool='avg'). Both keep the class
      token, as timm does.
    drop_path_rate: stochastic depth, rising linearly from 0 at the first block to this at
      the last (timm's calculate_drop_path_rates); only with train=True and `rngs` given.
    dtype: what the layers compute in (bfloat16 for mixed precision); parameters stay
      float32 and the features are float32.
    attention: `jax.nn.dot_product_attention`'s implementation, 'xla' or 'cudnn' (GPU, 16-bit).
    conv_algorithm: the patch embedding's convolution, 'xla' or 'patches' (patch_conv.py).
  """

  def __init__(self, width: int, depth: int, num_heads: int, patch_size: int = 16, *,
               position_embedding: str = "sincos", pos_embed_image_size: int = 224,
               pooling: str = "cls", drop_path_rate: float = 0.0, rngs: nnx.Rngs,
               dtype=jnp.float32, attention: str = "xla", conv_algorithm: str = "xla"):
    if width % num_heads:
      raise ValueError(f"The width {width} is not divisible by {num_heads} heads.")
    self.patch_size, self.width, self.dtype = patch_size, width, dtype
    self.position_embedding, self.pooling = position_embedding, pooling
    self.num_features = width
    lowering = (patch_conv.conv_general_dilated if conv_algorithm == "patches"
                else jax.lax.conv_general_dilated)
    self.patch_embed = nnx.Conv(3, width, (patch_size, patch_size), strides=patch_size,
                                padding=[(0, 0), (0, 0)],
                                kernel_init=_patch_embed_init(patch_size, width),
                                bias_init=nnx.initializers.zeros_init(), dtype=dtype,
                                rngs=rngs, conv_general_dilated=lowering)
    self.cls_token = nnx.Param(nnx.initializers.normal(1e-6)(rngs.params(), (1, 1, width)))
    if position_embedding == "learned":
      tokens = 1 + (pos_embed_image_size // patch_size)**2
      self.pos_embed = nnx.Param(_pos_embed_init(rngs.params(), (1, tokens, width)))
    # timm's linear stochastic-depth rule: torch.linspace(0, rate, depth).
    rates = np.linspace(0.0, drop_path_rate, depth)
    self.blocks = nnx.List([Block(width, num_heads, float(rate), rngs=rngs, dtype=dtype,
                                  attention=attention) for rate in rates])
    if pooling == "cls":
      self.norm = _layer_norm(width, rngs, dtype)
    else:
      self.fc_norm = _layer_norm(width, rngs, dtype)

  def position_table(self, grid: tuple[int, int]) -> jax.Array:
    """(1, 1 + h * w, width) float32 for an (h, w) patch grid."""
    if self.position_embedding == "sincos":
      return jnp.asarray(sincos_table(*grid, self.width))
    return resample_table(self.pos_embed[...], grid)

  def _drop_path_keys(self, train: bool, rngs) -> list | None:
    """Two keys per block when drop-path runs (train, randomness given and a rate > 0),
    else None. Training without `rngs` is training without drop-path: what an EMA target
    network is (MoCo v3's momentum encoder and DINO's teacher run none)."""
    if not train or rngs is None or not any(b.drop_path_rate > 0 for b in self.blocks):
      return None
    key = rngs.dropout() if isinstance(rngs, nnx.Rngs) else rngs
    keys = jax.random.split(key, (len(self.blocks), 2))
    return [tuple(pair) if block.drop_path_rate > 0 else None
            for pair, block in zip(keys, self.blocks)]

  def __call__(self, x: jax.Array, train: bool = True,
               rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
    """x: (B, H, W, 3) -> (B, width) float32. Drop-path runs when `train` and `rngs` (its
    randomness: an nnx.Rngs, whose 'dropout' stream gives a fresh key each call, or a PRNG
    key) are both given; the rest is the same in every mode."""
    patches = self.patch_embed(x)  # (B, H / p, W / p, width)
    batch, grid_h, grid_w, width = patches.shape
    cls_token = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (batch, 1, width))
    tokens = jnp.concatenate([cls_token, patches.reshape(batch, grid_h * grid_w, width)], 1)
    tokens = tokens + self.position_table((grid_h, grid_w)).astype(self.dtype)
    keys = self._drop_path_keys(train, rngs)
    for index, block in enumerate(self.blocks):
      tokens = block(tokens, None if keys is None else keys[index])
    if self.pooling == "cls":
      return self.norm(tokens[:, 0]).astype(jnp.float32)  # LayerNorm is per token.
    pooled = jnp.mean(tokens[:, 1:].astype(jnp.float32), axis=1)
    return self.fc_norm(pooled).astype(jnp.float32)


# --------------------------------------------------------------------- the family's faces


def architecture(model_config) -> tuple[int, int, int]:
  """(width, depth, heads) of `config.model` (model.vit.num_heads None: the variant's)."""
  vit = model_config.vit
  width, depth, heads = VARIANTS[vit.variant]
  return width, depth, heads if vit.num_heads is None else vit.num_heads


def create(model_config, rngs: nnx.Rngs, dtype=jnp.float32,
           conv_algorithm: str = "xla") -> VisionTransformer:
  """The ViT that `config.model` describes."""
  vit = model_config.vit
  width, depth, heads = architecture(model_config)
  return VisionTransformer(width, depth, heads, vit.patch_size,
                           position_embedding=vit.position_embedding,
                           pos_embed_image_size=vit.pos_embed_image_size,
                           pooling=vit.pooling, drop_path_rate=vit.drop_path_rate, rngs=rngs,
                           dtype=dtype, attention=vit.attention, conv_algorithm=conv_algorithm)


# model.vit fields that leave the parameters and the eval-mode features as they are: a
# checkpoint moves freely between their values (fine-tuning sets its own drop-path rate,
# as MoCo v3 and MAE fine-tune with 0.1 what they pretrained with 0).
RUN_TIME_FIELDS = ("attention", "drop_path_rate")


def model_fields(model_config) -> tuple[str, ...]:
  """The config fields that shape a ViT: model.name and model.vit but RUN_TIME_FIELDS."""
  return ("model.name", *(f"model.vit.{name}" for name in model_config.vit.keys()
                          if name not in RUN_TIME_FIELDS))


def check_config(config) -> None:
  """Raises ConfigError for a `config.model.vit` this family cannot build, or images its
  patches do not tile."""
  vit = config.model.vit
  require = config_checks.require
  require(vit.variant in VARIANTS,
          f"model.vit.variant must be one of {list(VARIANTS)}, got {vit.variant!r}.")
  require(isinstance(vit.patch_size, int) and vit.patch_size > 0,
          f"model.vit.patch_size must be a positive integer, got {vit.patch_size!r}.")
  width, _, heads = architecture(config.model)
  require(isinstance(heads, int) and heads > 0 and width % heads == 0,
          f"model.vit.num_heads must divide the {vit.variant} variant's width {width}, "
          f"got {heads!r}.")
  require(vit.position_embedding in POSITION_EMBEDDINGS,
          f"model.vit.position_embedding must be one of {list(POSITION_EMBEDDINGS)}, got "
          f"{vit.position_embedding!r}.")
  require(vit.position_embedding != "sincos" or width % 4 == 0,
          f"The sin-cos position table needs a width divisible by 4, got {width}.")
  require(vit.position_embedding != "learned" or (
      vit.pos_embed_image_size > 0 and vit.pos_embed_image_size % vit.patch_size == 0),
          f"model.vit.pos_embed_image_size={vit.pos_embed_image_size} (the learned position "
          f"table's grid) must be a positive multiple of model.vit.patch_size="
          f"{vit.patch_size}.")
  require(vit.pooling in POOLINGS,
          f"model.vit.pooling must be one of {list(POOLINGS)}, got {vit.pooling!r}.")
  require(0.0 <= vit.drop_path_rate < 1.0,
          f"model.vit.drop_path_rate must be in [0, 1), got {vit.drop_path_rate}.")
  size = config.augment.image_size
  require(size % vit.patch_size == 0,
          f"augment.image_size={size} is not a multiple of model.vit.patch_size="
          f"{vit.patch_size}: the patches must tile the image.")
  _check_attention(vit.attention, config.compute_dtype, width // heads)


def _check_attention(implementation: str, compute_dtype: str, head_width: int) -> None:
  require = config_checks.require
  require(implementation in ATTENTIONS,
          f"model.vit.attention must be one of {list(ATTENTIONS)}, got {implementation!r}.")
  if implementation != "cudnn":
    return
  require(jax.default_backend() == "gpu",
          f"model.vit.attention='cudnn' needs a GPU (this is {jax.default_backend()}): "
          f"use 'xla'.")
  require(compute_dtype != "float32",
          "model.vit.attention='cudnn' needs compute_dtype='bfloat16' (cuDNN's fused "
          "attention has no float32 kernel): set it, or use 'xla'.")
  require(head_width % 8 == 0 and head_width <= 128,
          f"model.vit.attention='cudnn' needs a head width that is a multiple of 8 and at "
          f"most 128, got {head_width}: use 'xla' or change model.vit.num_heads.")


def describe(model_config) -> str:
  """'vit_s16' for the variant at its patch size, then what differs from its defaults."""
  vit = model_config.vit
  name = f"vit_{str(vit.variant).lower()}{vit.patch_size}"
  _, _, heads = architecture(model_config)
  extras = []
  if vit.num_heads is not None and vit.num_heads != VARIANTS[vit.variant][2]:
    extras.append(f"{heads} heads")
  if vit.position_embedding == "learned":
    extras.append(f"learned position embedding ({vit.pos_embed_image_size} px grid)")
  if vit.pooling == "gap":
    extras.append("average pooling")
  return ", ".join([name, *extras])


# ------------------------------------------------------------ layer-wise learning-rate decay


def num_layers(model_config) -> int:
  """Layers for layer-wise decay: depth + 1 (MAE's lr_decay.py: the embeddings are layer
  0, block i is layer i + 1, what follows the blocks is layer depth + 1)."""
  return architecture(model_config)[1] + 1


_BLOCK_PATH = re.compile(r"^blocks/(\d+)/")


def layer_of(model_config, path: str) -> int:
  """The layer of an encoder parameter, by its '/'-joined path ('blocks/3/attn/qkv/kernel'
  -> 4): 0 for patch_embed, cls_token and pos_embed, i + 1 for blocks/i, depth + 1 for
  norm and fc_norm."""
  if path.split("/")[0] in ("patch_embed", "cls_token", "pos_embed"):
    return 0
  block = _BLOCK_PATH.match(path)
  if block:
    return int(block.group(1)) + 1
  if path.split("/")[0] in ("norm", "fc_norm"):
    return num_layers(model_config)
  raise ValueError(f"{path!r} is not a ViT encoder parameter path.")


# ------------------------------------------------------------------ as timm's VisionTransformer

_LN_NAMES = {"scale": "weight", "bias": "bias"}


def timm_constructor(model_config, image_size: int) -> tuple[str, dict]:
  """(Python that builds timm's model of these layers with no classifier, what
  encoder.json says about it). timm's registered name for Ti / S / B at its patch sizes,
  else VisionTransformer with every size given. The position table is exported at
  `image_size`'s grid, so img_size is that size."""
  vit = model_config.vit
  width, depth, heads = architecture(model_config)
  pool = "token" if vit.pooling == "cls" else "avg"
  name = TIMM_NAMES.get((vit.variant, vit.patch_size))
  common = (f"num_classes=0, num_heads={heads}, img_size={image_size}, global_pool='{pool}', "
            f"drop_path_rate={vit.drop_path_rate}")
  if name is not None:
    constructor = f"timm.create_model('{name}', {common})"
  else:
    name = "VisionTransformer"
    constructor = (f"timm.models.vision_transformer.VisionTransformer(patch_size="
                   f"{vit.patch_size}, embed_dim={width}, depth={depth}, mlp_ratio="
                   f"{float(MLP_RATIO)}, qkv_bias=True, {common})")
  # MoCo v3 keeps its sin-cos table fixed (requires_grad=False); timm's pos_embed is a
  # parameter: freeze it there to fine-tune as MoCo v3 does.
  return constructor, {"timm_model": name, "num_heads": heads, "global_pool": pool,
                       "img_size": image_size, "patch_size": vit.patch_size,
                       "embed_dim": width, "depth": depth,
                       "position_embedding": vit.position_embedding}


def timm_state_dict(model_config, params, image_size: int) -> dict[str, np.ndarray]:
  """The encoder's params (this project's nested dict) as timm's VisionTransformer
  state_dict (num_classes=0, so no head): conv kernel (p, p, 3, D) -> patch_embed.proj.weight
  (D, 3, p, p); dense kernels (in, out) -> weight (out, in); LayerNorm scale -> weight; the
  position table at `image_size`'s grid as pos_embed (1, 1 + N, D), float32."""
  array = functools.partial(np.asarray, dtype=np.float32)
  grid = (image_size // model_config.vit.patch_size,) * 2
  width = architecture(model_config)[0]
  if model_config.vit.position_embedding == "sincos":
    table = sincos_table(*grid, width)
  else:
    table = resample_table(jnp.asarray(params["pos_embed"]), grid)
  tensors = {"cls_token": array(params["cls_token"]), "pos_embed": array(table),
             "patch_embed.proj.weight": np.ascontiguousarray(
                 array(params["patch_embed"]["kernel"]).transpose(3, 2, 0, 1)),
             "patch_embed.proj.bias": array(params["patch_embed"]["bias"])}
  for index in sorted(params["blocks"], key=int):
    block = params["blocks"][index]
    for norm in ("norm1", "norm2"):
      for ours, theirs in _LN_NAMES.items():
        tensors[f"blocks.{index}.{norm}.{theirs}"] = array(block[norm][ours])
    for layer in ("attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2"):
      outer, inner = layer.split("/")
      name = f"blocks.{index}.{outer}.{inner}"
      tensors[f"{name}.weight"] = np.ascontiguousarray(array(block[outer][inner]["kernel"]).T)
      tensors[f"{name}.bias"] = array(block[outer][inner]["bias"])
  final = "norm" if model_config.vit.pooling == "cls" else "fc_norm"
  for ours, theirs in _LN_NAMES.items():
    tensors[f"{final}.{theirs}"] = array(params[final][ours])
  return tensors


def pytorch_weights(model_config, params, batch_stats, step: int, image_size: int):
  """The backbone contract's export: timm's VisionTransformer of these layers (no
  classifier: num_classes=0) and its state_dict, the position table at `image_size`."""
  del batch_stats, step  # No BatchNorm.
  constructor, details = timm_constructor(model_config, image_size)
  return contract.PyTorchWeights(library="timm", constructor=constructor, head=None,
                                 tensors=timm_state_dict(model_config, params, image_size),
                                 details=details)
