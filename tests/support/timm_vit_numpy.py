"""A NumPy-only forward pass of timm's VisionTransformer (no torch), for tests: what
`timm.create_model(name, num_classes=0, num_heads=..., global_pool=...)(images)` returns, from
a state dict in timm's layout, computed in float64.

Written from timm 1.0.29.dev0, huggingface/pytorch-image-models commit
aa4b5850c1543fa488abf260f18390eda46cf85d (2026-08-08):
- timm/models/vision_transformer.py
  - VisionTransformer.__init__: norm_layer defaults to timm's LayerNorm and act_layer to
    nn.GELU (lines 801, 803); use_fc_norm = global_pool in ('avg', 'avgmax', 'max') when
    fc_norm is None (800); `norm` is that LayerNorm only without fc_norm, Identity otherwise
    (879), `fc_norm` the reverse (902); one prefix token, the class token (809); no head
    with num_classes=0 (904).
  - _pos_embed (1038-1075), no_embed_class False: concatenate [cls; patches], then add
    pos_embed (N + 1 rows).
  - forward_features (1231-1253): patch_embed, _pos_embed, (patch_drop, norm_pre: Identity
    by default), blocks, norm.
  - Block.forward (206-215): x + attn(norm1(x)), then x + mlp(norm2(x)) (ls1, ls2 and
    drop_path Identity without init_values and drop_path_rate).
  - forward_head (1279-1292) with global_pool_nlc (686-708): 'token' takes x[:, 0]; 'avg'
    drops the num_prefix_tokens prefix tokens and takes the mean; then fc_norm.
- timm/layers/norm.py LayerNorm (70-90): F.layer_norm with eps 1e-6 (biased variance).
- timm/layers/attention.py Attention.forward (111-145): qkv reshaped to
  (B, N, 3, heads, head_dim), scale head_dim ** -0.5 (99), softmax over keys, heads
  concatenated in order, then proj (fused scaled_dot_product_attention computes the same).
- timm/layers/mlp.py Mlp.forward (47-54): fc1, GELU (exact, erf), fc2; hidden 4 * D.
- timm/layers/patch_embed.py PatchEmbed: a p x p convolution of stride p (62), then
  flatten(2).transpose(1, 2) (forward, 117-142): patches in row-major order.

Only the plain model: class token, learned pos_embed, qkv and proj biases, no layer scale,
no register tokens, no interpolation of pos_embed. Anything else in the state dict raises.
"""

import math
import re

import numpy as np

try:
  from scipy import special as _special  # A dependency of scikit-learn, not pinned itself.
except ImportError:  # pragma: no cover - scipy comes with scikit-learn.
  _special = None

LN_EPS = 1e-6  # timm.layers.LayerNorm's default.
MLP_RATIO = 4
POOLS = ("token", "avg")
# Where the final LayerNorm lives for each pool (vision_transformer.py lines 879 and 902).
FINAL_NORM = {"token": "norm", "avg": "fc_norm"}
BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
              "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
              "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")


def erf_exact(x: np.ndarray) -> np.ndarray:
  """erf elementwise, to double precision (scipy's, else math.erf per element)."""
  if _special is not None:
    return _special.erf(x)
  return np.vectorize(math.erf, otypes=[np.float64])(x)


def gelu(x: np.ndarray) -> np.ndarray:
  """nn.GELU() (approximate='none'): x * Phi(x), with the exact erf."""
  return 0.5 * x * (1.0 + erf_exact(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """(..., D) -> (..., D): F.layer_norm over the last axis, biased variance, eps 1e-6."""
  mean = x.mean(axis=-1, keepdims=True)
  var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
  return (x - mean) / np.sqrt(var + LN_EPS) * weight + bias


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """nn.Linear: (..., in) with weight (out, in) and bias (out,) -> (..., out)."""
  return x @ weight.T + bias


def patch_embed(images: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """(B, C, H, W) images, conv weight (D, C, p, p), bias (D,) -> (B, (H/p)(W/p), D) tokens,
  the patches in row-major order of the (H/p, W/p) grid (a stride-p convolution, flattened)."""
  b, c, h, w = images.shape
  p = weight.shape[-1]
  patches = images.reshape(b, c, h // p, p, w // p, p)
  tokens = np.einsum("bcipjq,dcpq->bijd", patches, weight) + bias
  return tokens.reshape(b, (h // p) * (w // p), weight.shape[0])


def attention(x: np.ndarray, qkv_weight: np.ndarray, qkv_bias: np.ndarray,
              proj_weight: np.ndarray, proj_bias: np.ndarray, num_heads: int) -> np.ndarray:
  """timm's Attention: (B, N, D) -> (B, N, D). qkv_weight (3D, D) holds q, k, v in that
  order, each with the heads side by side (head_dim = D / num_heads)."""
  b, n, d = x.shape
  head_dim = d // num_heads
  qkv = linear(x, qkv_weight, qkv_bias).reshape(b, n, 3, num_heads, head_dim)
  q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, heads, N, hd)
  logits = np.einsum("bhqc,bhkc->bhqk", q * head_dim ** -0.5, k)
  logits -= logits.max(axis=-1, keepdims=True)  # A stable softmax; the value is the same.
  weights = np.exp(logits)
  weights /= weights.sum(axis=-1, keepdims=True)
  out = np.einsum("bhqk,bhkc->bqhc", weights, v).reshape(b, n, d)
  return linear(out, proj_weight, proj_bias)


def block(x: np.ndarray, params: dict, num_heads: int) -> np.ndarray:
  """Block.forward: (B, N, D) -> (B, N, D); params are one block's BLOCK_KEYS."""
  y = layer_norm(x, params["norm1.weight"], params["norm1.bias"])
  x = x + attention(y, params["attn.qkv.weight"], params["attn.qkv.bias"],
                    params["attn.proj.weight"], params["attn.proj.bias"], num_heads)
  y = layer_norm(x, params["norm2.weight"], params["norm2.bias"])
  hidden = gelu(linear(y, params["mlp.fc1.weight"], params["mlp.fc1.bias"]))
  return x + linear(hidden, params["mlp.fc2.weight"], params["mlp.fc2.bias"])


def _depth(keys) -> int:
  """The number of blocks, from the blocks.{i}.* keys (which must be 0..depth-1)."""
  indices = {int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}
  if indices != set(range(len(indices))):
    raise ValueError(f"block indices are not 0..n-1: {sorted(indices)}")
  return len(indices)


def _expected_keys(depth: int, global_pool: str) -> set:
  top = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
         f"{FINAL_NORM[global_pool]}.weight", f"{FINAL_NORM[global_pool]}.bias"}
  return top | {f"blocks.{i}.{k}" for i in range(depth) for k in BLOCK_KEYS}


def _check(state_dict: dict, global_pool: str) -> int:
  """Raises ValueError unless the keys are exactly the plain model's; returns the depth."""
  if global_pool not in POOLS:
    raise ValueError(f"global_pool must be one of {POOLS}, got {global_pool!r}")
  depth = _depth(state_dict)
  expected = _expected_keys(depth, global_pool)
  missing, unexpected = expected - set(state_dict), set(state_dict) - expected
  if missing or unexpected:
    raise ValueError(f"not a plain timm ViT state dict for global_pool={global_pool!r}: "
                     f"missing {sorted(missing)}, unexpected {sorted(unexpected)}")
  return depth


def _grid(pos_embed: np.ndarray, patch: int, images_nchw: np.ndarray) -> int:
  """The side of the square patch grid; raises ValueError unless the images fit it."""
  num_patches = pos_embed.shape[1] - 1
  side = math.isqrt(num_patches)
  if side * side != num_patches:
    raise ValueError(f"pos_embed has {num_patches} patch rows: not a square grid")
  if images_nchw.ndim != 4 or images_nchw.shape[2:] != (side * patch, side * patch):
    raise ValueError(f"images {images_nchw.shape} do not match pos_embed's {side}x{side} "
                     f"grid of {patch}-pixel patches (no interpolation here)")
  return side


def features(state_dict: dict, images_nchw: np.ndarray, num_heads: int,
             global_pool: str = "token") -> np.ndarray:
  """timm's VisionTransformer with num_classes=0: (B, 3, H, W) images -> (B, D) float64.

  'token': the class token after the final `norm`; 'avg': the mean of the patch tokens (the
  class token left out), then `fc_norm` (`norm` is Identity then). The depth comes from the
  keys, the patch size from patch_embed.proj.weight (D, 3, p, p); H and W must be pos_embed's
  grid times p.
  """
  depth = _check(state_dict, global_pool)
  sd = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
  width = sd["cls_token"].shape[-1]
  if width % num_heads:
    raise ValueError(f"width {width} is not a multiple of num_heads {num_heads}")
  _grid(sd["pos_embed"], sd["patch_embed.proj.weight"].shape[-1], images_nchw)
  x = patch_embed(np.asarray(images_nchw, np.float64), sd["patch_embed.proj.weight"],
                  sd["patch_embed.proj.bias"])
  cls = np.broadcast_to(sd["cls_token"], (x.shape[0], 1, width))
  x = np.concatenate([cls, x], axis=1) + sd["pos_embed"]  # no_embed_class=False
  for i in range(depth):
    x = block(x, {k: sd[f"blocks.{i}.{k}"] for k in BLOCK_KEYS}, num_heads)
  norm = FINAL_NORM[global_pool]
  if global_pool == "token":
    x = layer_norm(x, sd[f"{norm}.weight"], sd[f"{norm}.bias"])[:, 0]
  else:
    x = layer_norm(x[:, 1:].mean(axis=1), sd[f"{norm}.weight"], sd[f"{norm}.bias"])
  return x


def random_state_dict(rng: np.random.Generator, width: int, depth: int, num_heads: int,
                      patch: int, image_size: int, global_pool: str = "token") -> dict:
  """A random float32 state dict in timm's layout for `features`: (image_size / patch)^2
  patches, MLP hidden 4 * width. Weights ~ N(0, 1/fan_in); norms' scales near 1 and all biases
  and embeddings nonzero, so that every parameter changes the output."""
  if global_pool not in POOLS or width % num_heads or image_size % patch:
    raise ValueError("global_pool must be 'token' or 'avg', width a multiple of num_heads, "
                     "image_size a multiple of patch")
  num_patches = (image_size // patch) ** 2

  def dense(out, fan_in):
    return rng.normal(size=(out, fan_in)) / math.sqrt(fan_in)

  def small(*shape):
    return 0.1 * rng.normal(size=shape)

  sd = {"cls_token": rng.normal(size=(1, 1, width)),
        "pos_embed": 0.5 * rng.normal(size=(1, num_patches + 1, width)),
        "patch_embed.proj.weight": (rng.normal(size=(width, 3, patch, patch)) /
                                    math.sqrt(3 * patch * patch)),
        "patch_embed.proj.bias": small(width)}
  for name in (FINAL_NORM[global_pool],) + tuple(f"blocks.{i}.{n}" for i in range(depth)
                                                 for n in ("norm1", "norm2")):
    sd[f"{name}.weight"], sd[f"{name}.bias"] = 1.0 + small(width), small(width)
  hidden = MLP_RATIO * width
  for i in range(depth):
    sd.update({f"blocks.{i}.attn.qkv.weight": dense(3 * width, width),
               f"blocks.{i}.attn.qkv.bias": small(3 * width),
               f"blocks.{i}.attn.proj.weight": dense(width, width),
               f"blocks.{i}.attn.proj.bias": small(width),
               f"blocks.{i}.mlp.fc1.weight": dense(hidden, width),
               f"blocks.{i}.mlp.fc1.bias": small(hidden),
               f"blocks.{i}.mlp.fc2.weight": dense(width, hidden),
               f"blocks.{i}.mlp.fc2.bias": small(width)})
  return {k: v.astype(np.float32) for k, v in sd.items()}
