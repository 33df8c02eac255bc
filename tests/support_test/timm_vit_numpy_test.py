"""The NumPy reference of timm's ViT (tests/support/timm_vit_numpy.py) against hand-written
pieces: attention per head in loops, the patch embedding as a loop over patches, a depth-0
model's class token, and invariance under a shuffle of the patches with their pos_embed rows."""

import math

import numpy as np
import pytest

from tests.support import timm_vit_numpy as vit


def _loop_attention(x, qkv_w, qkv_b, proj_w, proj_b, num_heads):
  """(B, N, D) -> (B, N, D): each head's q, k, v from its own rows of qkv_w, softmax by
  hand per query, heads concatenated, then the output projection."""
  b, n, d = x.shape
  hd = d // num_heads
  out = np.zeros((b, n, d))
  for bi in range(b):
    for h in range(num_heads):
      rows = [slice(part * d + h * hd, part * d + (h + 1) * hd) for part in range(3)]
      q, k, v = (x[bi] @ qkv_w[r].T + qkv_b[r] for r in rows)  # (N, hd) each
      for i in range(n):
        scores = [float(q[i] @ k[j]) / math.sqrt(hd) for j in range(n)]
        exps = [math.exp(s - max(scores)) for s in scores]
        out[bi, i, h * hd:(h + 1) * hd] = sum(e * v[j] for j, e in enumerate(exps)) / sum(exps)
  return out @ proj_w.T + proj_b


def test_attention_equals_per_head_loops():
  rng = np.random.default_rng(0)
  d, heads = 12, 3
  x = rng.normal(size=(2, 5, d))
  params = (rng.normal(size=(3 * d, d)), rng.normal(size=3 * d), rng.normal(size=(d, d)),
            rng.normal(size=d))
  ours = vit.attention(x, *params, num_heads=heads)
  np.testing.assert_allclose(ours, _loop_attention(x, *params, heads), rtol=1e-10, atol=1e-12)
  # The heads matter: one head over all 12 channels is another function.
  assert not np.allclose(ours, _loop_attention(x, *params, 1))


def test_patch_embed_equals_a_loop_over_patches():
  rng = np.random.default_rng(1)
  p, d = 3, 4
  images = rng.normal(size=(2, 3, 6, 9))
  weight, bias = rng.normal(size=(d, 3, p, p)), rng.normal(size=d)
  tokens = vit.patch_embed(images, weight, bias)
  assert tokens.shape == (2, 6, d)
  for i in range(2):
    for j in range(3):
      patch = images[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (B, 3, p, p)
      expected = np.array([[np.sum(patch[b] * weight[o]) + bias[o] for o in range(d)]
                           for b in range(2)])
      np.testing.assert_allclose(tokens[:, i * 3 + j], expected, rtol=1e-12)


def _hand_layer_norm(c, weight, bias):
  """One (D,) vector through F.layer_norm(eps=1e-6), written out (biased variance)."""
  mean = sum(c) / len(c)
  var = sum((ci - mean) ** 2 for ci in c) / len(c)
  return (c - mean) / math.sqrt(var + 1e-6) * weight + bias


def test_depth_zero_token_is_the_normalised_class_token_plus_its_position():
  rng = np.random.default_rng(2)
  sd = vit.random_state_dict(rng, width=8, depth=0, num_heads=2, patch=4, image_size=8,
                             global_pool="token")
  images = rng.normal(size=(3, 3, 8, 8))
  c = (sd["cls_token"][0, 0] + sd["pos_embed"][0, 0]).astype(np.float64)
  expected = _hand_layer_norm(c, sd["norm.weight"], sd["norm.bias"])
  np.testing.assert_allclose(vit.features(sd, images, num_heads=2),
                             np.tile(expected, (3, 1)), rtol=1e-6)


def test_depth_zero_avg_is_fc_norm_of_the_mean_patch_token_without_the_class_token():
  rng = np.random.default_rng(5)
  sd = vit.random_state_dict(rng, width=8, depth=0, num_heads=2, patch=4, image_size=8,
                             global_pool="avg")
  images = rng.normal(size=(2, 3, 8, 8))
  tokens = vit.patch_embed(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"])
  for b in range(2):
    mean = sum(tokens[b, j] + sd["pos_embed"][0, 1 + j] for j in range(4)) / 4
    expected = _hand_layer_norm(mean, sd["fc_norm.weight"], sd["fc_norm.bias"])
    np.testing.assert_allclose(vit.features(sd, images, 2, "avg")[b], expected, rtol=1e-6)


def _shuffle_patches(images, perm, patch):
  """Patch j of the result (row-major) is patch perm[j] of `images` (B, C, H, W)."""
  b, c, h, w = images.shape
  gh, gw = h // patch, w // patch
  grid = images.reshape(b, c, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5)
  grid = grid.reshape(b, gh * gw, c, patch, patch)[:, perm]
  return grid.reshape(b, gh, gw, c, patch, patch).transpose(0, 3, 1, 4, 2, 5).reshape(images.shape)


@pytest.mark.parametrize("global_pool", vit.POOLS)
def test_shuffling_patches_with_their_positions_changes_nothing(global_pool):
  rng = np.random.default_rng(3)
  sd = vit.random_state_dict(rng, width=8, depth=2, num_heads=2, patch=4, image_size=12,
                             global_pool=global_pool)
  images = rng.normal(size=(2, 3, 12, 12))
  perm = rng.permutation(9)
  shuffled_sd = dict(sd, pos_embed=np.concatenate([sd["pos_embed"][:, :1],
                                                   sd["pos_embed"][:, 1:][:, perm]], axis=1))
  shuffled = _shuffle_patches(images, perm, 4)
  before = vit.features(sd, images, num_heads=2, global_pool=global_pool)
  assert before.shape == (2, 8)
  np.testing.assert_allclose(vit.features(shuffled_sd, shuffled, 2, global_pool), before,
                             rtol=1e-10, atol=1e-12)
  # The positions matter: the shuffled patches on the original positions differ.
  assert not np.allclose(vit.features(sd, shuffled, 2, global_pool), before, atol=1e-3)


def test_gelu_is_exact_with_either_erf():
  x = np.linspace(-6, 6, 101)
  by_math = np.array([math.erf(v) for v in x])
  np.testing.assert_allclose(vit.erf_exact(x), by_math, rtol=0, atol=1e-15)
  np.testing.assert_allclose(vit.gelu(np.array([1.0, -1.0])),
                             [0.8413447460685429, -0.15865525393145707], rtol=1e-14)


def test_state_dicts_and_images_that_do_not_fit_are_refused():
  rng = np.random.default_rng(4)
  sd = vit.random_state_dict(rng, width=8, depth=1, num_heads=2, patch=4, image_size=8)
  images = rng.normal(size=(1, 3, 8, 8))
  with pytest.raises(ValueError, match="grid"):
    vit.features(sd, rng.normal(size=(1, 3, 12, 12)), num_heads=2)
  with pytest.raises(ValueError, match="unexpected.*head.weight"):
    vit.features(dict(sd, **{"head.weight": np.zeros((10, 8))}), images, num_heads=2)
  with pytest.raises(ValueError, match="missing.*fc_norm.weight"):  # 'avg' has fc_norm, no norm.
    vit.features(sd, images, num_heads=2, global_pool="avg")
  with pytest.raises(ValueError, match="global_pool"):
    vit.features(sd, images, num_heads=2, global_pool="map")
