"""The ViT backbone (simclr_jax/backbones/vit.py): timm's parameter counts, the features
against a NumPy forward pass written from timm's VisionTransformer, MoCo v3's sin-cos table
and initialisation, two image sizes on one set of parameters, drop-path, the config checks,
the layer ids of layer-wise decay and the export in timm's names.

The reference is tests/support/timm_vit_numpy.py: timm's VisionTransformer(num_classes=0)
in NumPy, written from timm's definitions, reading only timm's state_dict names.
"""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx
from jax.sharding import Mesh

from configs import default as default_config
from simclr_jax import backbones, config_checks
from simclr_jax import encoder as encoder_lib
from simclr_jax.backbones import vit
from simclr_jax.stages import export
from simclr_jax.training import checkpoints
from simclr_jax.training import model as model_lib
from tests.support import timm_vit_numpy
from tests.support.helpers import count_params, tiny_vit_config

# ------------------------------------------------------------------------ timm's names


def timm_keys(depth, global_pool):
  """timm's VisionTransformer(num_classes=0).state_dict() keys (class token, learned
  pos_embed), from its definition."""
  keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
  for i in range(depth):
    for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
      keys += [f"blocks.{i}.{layer}.weight", f"blocks.{i}.{layer}.bias"]
  final = "norm" if global_pool == "token" else "fc_norm"
  return keys + [f"{final}.weight", f"{final}.bias"]


# ---------------------------------------------------------------------------- helpers


def _config(**vit_fields):
  config = tiny_vit_config()
  config.model.vit.update(vit_fields)
  return config


@functools.lru_cache(maxsize=None)
def _abstract(variant, position_embedding):
  config = default_config.get_config()
  config.model.name = "vit"
  config.model.vit.update(variant=variant, position_embedding=position_embedding)
  return nnx.eval_shape(lambda: backbones.create(config, nnx.Rngs(0)))


def _build(config, seed=0):
  """The backbone with every parameter moved off its init (LayerNorms, biases, the class
  token all matter), so that a wrong name or layout shows."""
  model = backbones.create(config, nnx.Rngs(seed))
  params = nnx.state(model, nnx.Param)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  moved = [leaf + 0.1 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]
  nnx.update(model, jax.tree.unflatten(tree, moved))
  return model


@functools.partial(nnx.jit, static_argnames="train")
def _features(model, images, train=False, rngs=None):
  return model(images, train=train, rngs=rngs)


def _images(size, batch=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def _reference(config, model, images):
  """timm's features of this model's exported tensors on the NHWC `images`."""
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  tensors = vit.timm_state_dict(config.model, params, images.shape[1])
  _, _, heads = vit.architecture(config.model)
  pool = "token" if config.model.vit.pooling == "cls" else "avg"
  nchw = images.transpose(0, 3, 1, 2).astype(np.float64)
  return timm_vit_numpy.features(tensors, nchw, heads, pool)


# ---------------------------------------------------------------------- parameter counts

# timm's vit_{tiny,small,base}_patch16_224(num_classes=0): 5,524,416 / 21,665,664 /
# 85,798,656 parameters (issue 28); without the learned table (197 x width), MoCo v3's.
TIMM_COUNTS = {"Ti": 5_524_416, "S": 21_665_664, "B": 85_798_656}
WIDTHS = {"Ti": 192, "S": 384, "B": 768}


@pytest.mark.parametrize("variant", sorted(TIMM_COUNTS))
def test_parameter_counts_equal_timm_s(variant):
  learned, sincos = _abstract(variant, "learned"), _abstract(variant, "sincos")
  assert count_params(learned) == TIMM_COUNTS[variant]
  assert count_params(sincos) == TIMM_COUNTS[variant] - 197 * WIDTHS[variant]
  assert learned.num_features == sincos.num_features == WIDTHS[variant]
  assert "pos_embed" not in nnx.to_pure_dict(nnx.state(sincos, nnx.Param))  # A constant.


def test_sincos_counts_are_the_issue_s():
  assert [count_params(_abstract(v, "sincos")) for v in ("Ti", "S", "B")] == [
      5_486_592, 21_590_016, 85_647_360]


def test_default_vit_is_vit_s16_with_moco_v3_s_defaults():
  config = default_config.get_config()
  config.model.name = "vit"
  backbones.check_config(config)
  assert backbones.describe(config.model) == "vit_s16"
  assert vit.architecture(config.model) == (384, 12, 6)
  config.model.vit.update(num_heads=12, position_embedding="learned", pooling="gap")
  assert backbones.describe(config.model) == (
      "vit_s16, 12 heads, learned position embedding (224 px grid), average pooling")


# ------------------------------------------------------------------ features against timm


@pytest.mark.parametrize("position_embedding,pooling", [("sincos", "cls"), ("learned", "gap")])
def test_features_are_timm_s_at_two_image_sizes(position_embedding, pooling):
  """One set of parameters at its own size (16 px) and at 24 px (another patch grid: the
  sin-cos table recomputed, the learned one resampled), each equal to timm's forward pass
  on the tensors exported for that size."""
  config = _config(position_embedding=position_embedding, pooling=pooling)
  model = _build(config)
  for size in (16, 24):
    images = _images(size)
    features = np.asarray(_features(model, images))
    reference = _reference(config, model, images)
    assert features.shape == reference.shape == (2, 64) and features.dtype == np.float32
    assert reference.std() > 0.1
    np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-5)


def test_cls_and_gap_read_different_parameters():
  """'cls' ends in `norm` on the class token, 'gap' in `fc_norm` on the patch mean."""
  cls_params = nnx.state(_build(_config(pooling="cls")), nnx.Param)
  gap_params = nnx.state(_build(_config(pooling="gap")), nnx.Param)
  assert "norm" in cls_params and "fc_norm" not in cls_params
  assert "fc_norm" in gap_params and "norm" not in gap_params


def test_bfloat16_computes_in_bfloat16_with_float32_parameters():
  config = _config()
  model32 = _build(config)
  config.compute_dtype = "bfloat16"
  model16 = backbones.create(config, nnx.Rngs(0))
  nnx.update(model16, nnx.state(model32, nnx.Param))
  assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model16, nnx.Param))} == {
      jnp.dtype(jnp.float32)}
  images = _images(16)
  jaxpr = str(jax.make_jaxpr(lambda x: model16(x, train=False))(images))
  assert "bf16[2,17,192]" in jaxpr  # The qkv projection of 17 tokens, in bfloat16.
  low, high = np.asarray(_features(model16, images)), np.asarray(_features(model32, images))
  assert low.dtype == np.float32
  np.testing.assert_allclose(low, high, atol=0.1)


# ----------------------------------------------------------------------- position tables


def moco_v3_sincos(h, w, width, temperature=10000.0):
  """MoCo v3's build_2d_sincos_position_embedding (vits.py:53-69) element by element:
  torch.meshgrid(grid_w, grid_h) ('ij') flattened, so entry m = iw * h + ih."""
  quarter = width // 4
  omega = [1.0 / temperature**(d / quarter) for d in range(quarter)]
  rows = [[0.0] * width]  # The class token's.
  for iw in range(w):
    for ih in range(h):
      rows.append([math.sin(iw * o) for o in omega] + [math.cos(iw * o) for o in omega]
                  + [math.sin(ih * o) for o in omega] + [math.cos(ih * o) for o in omega])
  return np.array(rows)[None]


@pytest.mark.parametrize("h,w,width", [(4, 4, 64), (2, 3, 8), (14, 14, 384)])
def test_sincos_table_is_moco_v3_s(h, w, width):
  table = vit.sincos_table(h, w, width)
  assert table.shape == (1, 1 + h * w, width) and table.dtype == np.float32
  np.testing.assert_allclose(table, moco_v3_sincos(h, w, width), atol=2e-6)


def pil_bicubic(n_in, n_out):
  """(n_out, n_in) weights of PyTorch's F.interpolate(mode='bicubic', antialias=True) (PIL's
  algorithm): the a = -0.5 cubic around each output centre (i + 0.5) n_in / n_out, widened
  by the scale when shrinking, weights normalised to sum 1 (so at the borders too)."""

  def cubic(x):
    x, a = abs(x), -0.5
    if x < 1:
      return ((a + 2) * x - (a + 3)) * x * x + 1
    return (((x - 5) * x + 8) * x - 4) * a if x < 2 else 0.0

  scale = n_in / n_out
  support = max(scale, 1.0)
  weights = np.array([[cubic((j + 0.5 - (i + 0.5) * scale) / support) for j in range(n_in)]
                      for i in range(n_out)])
  return weights / weights.sum(1, keepdims=True)


@pytest.mark.parametrize("old,new", [(4, 6), (6, 4), (4, 4)])
def test_learned_table_is_resampled_as_timm_s(old, new):
  """timm's resample_abs_pos_embed: the class token's row kept, the grid resized with
  PyTorch's antialiased bicubic, here written as PIL's weights."""
  table = np.random.default_rng(0).normal(size=(1, 1 + old * old, 8)).astype(np.float32)
  resampled = np.asarray(vit.resample_table(jnp.asarray(table), (new, new)))
  grid = table[0, 1:].reshape(old, old, 8)
  weights = pil_bicubic(old, new)
  expected = np.einsum("io,jp,opc->ijc", weights, weights, grid).reshape(-1, 8)
  assert resampled.shape == (1, 1 + new * new, 8)
  np.testing.assert_array_equal(resampled[0, 0], table[0, 0])
  np.testing.assert_allclose(resampled[0, 1:], expected, atol=1e-5)


# ------------------------------------------------------------------------- initialisation


def test_initialisation_is_moco_v3_s():
  """vits.py:31-47: xavier-uniform Linear weights, qkv's bound sqrt(6 / (D + D)), the patch
  embedding's sqrt(6 / (3 p^2 + D)), zero biases, class token N(0, 1e-6); LayerNorms at
  (1, 0); a learned table N(0, 0.02) (timm)."""
  config = _config(position_embedding="learned", patch_size=8)
  params = nnx.to_pure_dict(nnx.state(backbones.create(config, nnx.Rngs(3)), nnx.Param))
  d = 64

  def uniform(array, bound):
    array = np.asarray(array)
    assert np.abs(array).max() <= bound and np.abs(array).max() > 0.97 * bound
    assert abs(array.std() - bound / math.sqrt(3)) < 0.05 * bound

  uniform(params["patch_embed"]["kernel"], math.sqrt(6 / (3 * 8 * 8 + d)))
  block = params["blocks"][2]
  uniform(block["attn"]["qkv"]["kernel"], math.sqrt(6 / (d + d)))
  uniform(block["attn"]["proj"]["kernel"], math.sqrt(6 / (d + d)))
  uniform(block["mlp"]["fc1"]["kernel"], math.sqrt(6 / (d + 4 * d)))
  uniform(block["mlp"]["fc2"]["kernel"], math.sqrt(6 / (4 * d + d)))
  biases = [params["patch_embed"]["bias"]] + [block[a][b]["bias"] for a, b in (
      ("attn", "qkv"), ("attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2"))]
  assert all(not np.any(bias) for bias in biases)
  np.testing.assert_array_equal(block["norm1"]["scale"], np.ones(d))
  assert 0 < np.abs(params["cls_token"]).max() < 1e-5
  assert abs(np.std(params["pos_embed"]) - 0.02) < 0.002


# ------------------------------------------------------------------------------ drop-path


def test_drop_path_only_in_training_and_as_timm_s():
  config = _config(drop_path_rate=0.5)
  model = _build(config)
  plain = _build(_config())  # The same parameters (same seed) without drop-path.
  images = _images(16, batch=8)
  evaluated = np.asarray(_features(model, images))
  np.testing.assert_array_equal(evaluated, np.asarray(_features(model, images)))
  np.testing.assert_array_equal(evaluated, np.asarray(_features(plain, images)))
  # timm's rule: rates rising linearly to drop_path_rate at the last block.
  np.testing.assert_allclose([b.drop_path_rate for b in model.blocks], [0, 1 / 6, 1 / 3, 0.5])
  first = np.asarray(_features(model, images, True, nnx.Rngs(dropout=0)))
  second = np.asarray(_features(model, images, True, nnx.Rngs(dropout=1)))
  assert not np.allclose(first, evaluated) and not np.allclose(first, second)
  np.testing.assert_array_equal(first, _features(model, images, True, nnx.Rngs(dropout=0)))
  by_key = np.asarray(_features(model, images, True, jax.random.key(0)))  # A key does too.
  assert not np.allclose(by_key, evaluated)
  # Training without randomness is training without drop-path (an EMA target's mode).
  np.testing.assert_array_equal(evaluated, np.asarray(_features(model, images, True)))
  # Without drop-path, training and evaluation are the same function (no BatchNorm).
  np.testing.assert_array_equal(evaluated, np.asarray(_features(plain, images, True)))


def test_drop_path_zeroes_whole_examples_and_rescales_the_rest():
  x = jnp.ones((4000, 3, 2))
  out = np.asarray(vit.drop_path(x, 0.25, jax.random.key(0)))
  per_example = out.reshape(4000, -1)
  np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / 0.75])
  assert (per_example == per_example[:, :1]).all()
  assert abs((per_example[:, 0] == 0).mean() - 0.25) < 0.03


def test_a_block_drops_each_residual_branch_on_its_own():
  """timm's Block (x + drop_path1(attn(norm1(x))), then + drop_path2(mlp(norm2(x)))) by hand
  from the block's layers and `drop_path`: each branch has its own mask, and of 256
  examples at rate 0.5 about half keep each branch."""
  block = vit.Block(16, 2, 0.5, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (256, 3, 16))
  keys = tuple(jax.random.split(jax.random.key(2)))
  attn = block.attn(block.norm1(x))
  y = x + vit.drop_path(attn, 0.5, keys[0])
  expected = y + vit.drop_path(block.mlp(block.norm2(y)), 0.5, keys[1])
  np.testing.assert_allclose(block(x, keys), expected, rtol=1e-6, atol=1e-6)
  kept_attn = np.abs(np.asarray(y - x)).max(axis=(1, 2)) > 0
  kept_mlp = np.abs(np.asarray(expected - y)).max(axis=(1, 2)) > 0
  assert 0.4 < kept_attn.mean() < 0.6 and 0.4 < kept_mlp.mean() < 0.6
  assert (kept_attn != kept_mlp).any()  # Two masks, not one.
  np.testing.assert_array_equal(block(x), x + attn + block.mlp(block.norm2(x + attn)))


# ---------------------------------------------------------------------------- the config


@pytest.mark.parametrize("fields,image_size,message", [
    ({"variant": "L"}, 16, "model.vit.variant must be one of"),
    ({"num_heads": 3}, 16, "must divide the mu variant's width 64"),
    ({"patch_size": 5}, 16, "augment.image_size=16 is not a multiple of model.vit.patch_size=5"),
    ({"position_embedding": "rope"}, 16, "model.vit.position_embedding must be one of"),
    ({"pooling": "max"}, 16, "model.vit.pooling must be one of"),
    ({"drop_path_rate": 1.0}, 16, r"model.vit.drop_path_rate must be in \[0, 1\)"),
    ({"drop_path_rate": -0.1}, 16, r"model.vit.drop_path_rate must be in \[0, 1\)"),
    ({"pos_embed_image_size": 18, "position_embedding": "learned"}, 16,
     "the learned position table's grid\\) must be a positive multiple of model.vit.patch_size"),
    ({"attention": "flash"}, 16, "model.vit.attention must be one of"),
    ({"attention": "cudnn"}, 16, "model.vit.attention='cudnn' needs a GPU"),
])
def test_config_errors(fields, image_size, message):
  config = _config(**fields)
  config.augment.image_size = image_size
  with pytest.raises(config_checks.ConfigError, match=message):
    model_lib.check_model_config(config)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.99])
def test_drop_path_rates_in_0_1_are_accepted(rate):
  model_lib.check_model_config(_config(drop_path_rate=rate))


def test_cudnn_needs_bfloat16_and_a_head_width_cudnn_has(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # As on a GPU machine.
  config = _config(attention="cudnn")
  with pytest.raises(config_checks.ConfigError, match="needs compute_dtype='bfloat16'"):
    model_lib.check_model_config(config)
  config.compute_dtype = "bfloat16"
  model_lib.check_model_config(config)  # Heads of 16.
  config.model.vit.num_heads = 8
  model_lib.check_model_config(config)  # Heads of 8.
  config.model.vit.num_heads = 16
  with pytest.raises(config_checks.ConfigError, match="multiple of 8 and at most 128, got 4"):
    model_lib.check_model_config(config)


def test_model_fields_leave_out_run_time_choices():
  config = _config()
  fields = model_lib.model_fields(config)
  assert "model.vit.variant" in fields and "model.vit.position_embedding" in fields
  assert "model.vit.attention" not in fields and "model.vit.drop_path_rate" not in fields
  # A ResNet's checkpoint does not depend on the ViT's block (nor the ViT's on ResNet's).
  config.model.name = "resnet"
  assert not any(field.startswith("model.vit") for field in model_lib.model_fields(config))


# ------------------------------------------------------------------ layer-wise decay ids


def test_layer_ids_for_layer_wise_decay():
  config = _config(position_embedding="learned")
  params = nnx.to_pure_dict(nnx.state(backbones.create(config, nnx.Rngs(0)), nnx.Param))
  paths = export.flat_state_dict(params, {})
  layers = {path: vit.layer_of(config.model, path) for path in paths}
  assert vit.num_layers(config.model) == 5
  for path in ("patch_embed/kernel", "patch_embed/bias", "cls_token", "pos_embed"):
    assert layers[path] == 0
  assert layers["blocks/0/norm1/scale"] == 1 and layers["blocks/3/attn/qkv/kernel"] == 4
  assert layers["norm/scale"] == layers["norm/bias"] == 5
  assert {layers[p] for p in paths if p.startswith("blocks/2/")} == {3}
  assert vit.layer_of(_config(pooling="gap").model, "fc_norm/scale") == 5
  with pytest.raises(ValueError, match="not a ViT encoder parameter path"):
    vit.layer_of(config.model, "head/kernel")


# --------------------------------------------------------------------------------- export


def _write_checkpoint(workdir, config, step):
  """A checkpoint of `config`'s model (SimCLR on the ViT) as pretraining saves it, every
  encoder parameter moved off its init."""
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  model = jax.device_get(model_lib.init_model(config, mesh))
  rng = np.random.default_rng(step)
  model["params"]["encoder"] = jax.tree.map(
      lambda leaf: (leaf + rng.normal(0, 0.1, leaf.shape)).astype(np.float32),
      model["params"]["encoder"])
  with checkpoints.create_manager(checkpoints.checkpoint_dir(workdir)) as manager:
    checkpoints.save(manager, step, {"model": jax.device_put(model, jax.devices()[0])}, config)
    manager.wait_until_finished()


def test_export_is_timm_s_layout_and_computes_its_features(tmp_path):
  """The export stage on a ViT checkpoint: timm's names and shapes, encoder.json naming
  timm's model, heads and pooling; timm's forward pass on the exported tensors gives
  load_encoder's features (float32)."""
  config = _config(position_embedding="learned", pooling="gap", num_heads=2)
  config.augment.image_size = 24  # Not the table's 16 px: the export resamples it.
  config.augment.normalize = True
  _write_checkpoint(tmp_path / "pretrain", config, step=3)
  config.export.pretrain_workdir = str(tmp_path / "pretrain")
  summary = export.export_encoder(config, str(tmp_path / "out"))
  folder = tmp_path / "out" / "export"
  tensors = safetensors.numpy.load_file(str(folder / "encoder.safetensors"))
  meta = json.loads((folder / "encoder.json").read_text())

  assert sorted(tensors) == sorted(timm_keys(4, "avg"))
  shapes = {"cls_token": (1, 1, 64), "pos_embed": (1, 1 + 36, 64),
            "patch_embed.proj.weight": (64, 3, 4, 4), "blocks.3.attn.qkv.weight": (192, 64),
            "blocks.3.attn.qkv.bias": (192,), "blocks.0.mlp.fc1.weight": (256, 64),
            "blocks.0.mlp.fc2.weight": (64, 256), "fc_norm.weight": (64,)}
  assert {name: tensors[name].shape for name in shapes} == shapes
  assert all(value.dtype == np.float32 for value in tensors.values())
  assert summary["layout"] == meta["layout"] == "timm"
  assert meta["architecture"] == "vit_mu4, 2 heads, learned position embedding (16 px grid), " \
                                 "average pooling"
  assert meta["pytorch_model"] == {"timm_model": "VisionTransformer", "num_heads": 2,
                                   "global_pool": "avg", "img_size": 24, "patch_size": 4,
                                   "embed_dim": 64, "depth": 4,
                                   "position_embedding": "learned"}
  constructor = ("model = timm.models.vision_transformer.VisionTransformer(patch_size=4, "
                 "embed_dim=64, depth=4, mlp_ratio=4.0, qkv_bias=True, num_classes=0, "
                 "num_heads=2, img_size=24, global_pool='avg', drop_path_rate=0.0)")
  assert constructor in meta["pytorch"]
  assert not any("Identity" in line for line in meta["pytorch"])  # No head to replace.

  images = np.random.default_rng(0).integers(0, 256, (2, 24, 24, 3), np.uint8)
  x = (images / 255.0 - np.array(meta["normalize"]["mean"])) / np.array(meta["normalize"]["std"])
  reference = timm_vit_numpy.features(tensors, x.transpose(0, 3, 1, 2), 2, "avg")
  features = np.asarray(encoder_lib.load_encoder(config.export.pretrain_workdir)(images))
  assert features.shape == reference.shape == (2, 64) and reference.std() > 0.1
  np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant,patch,pooling,expected", [
    ("S", 16, "cls", "timm.create_model('vit_small_patch16_224', num_classes=0, num_heads=12, "
                     "img_size=224, global_pool='token', drop_path_rate=0.0)"),
    ("B", 16, "gap", "timm.create_model('vit_base_patch16_224', num_classes=0, num_heads=12, "
                     "img_size=224, global_pool='avg', drop_path_rate=0.0)"),
    ("Ti", 4, "cls", "timm.models.vision_transformer.VisionTransformer(patch_size=4, "
                     "embed_dim=192, depth=12, mlp_ratio=4.0, qkv_bias=True, num_classes=0, "
                     "num_heads=12, img_size=224, global_pool='token', drop_path_rate=0.0)"),
])
def test_timm_constructor(variant, patch, pooling, expected):
  config = default_config.get_config()
  config.model.name = "vit"
  config.model.vit.update(variant=variant, patch_size=patch, pooling=pooling, num_heads=12)
  constructor, details = vit.timm_constructor(config.model, 224)
  assert constructor == expected
  assert details["num_heads"] == 12
