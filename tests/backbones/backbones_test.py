"""The ResNet backbones and the MLP heads: parameter counts, shapes and BatchNorm behaviour."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default as default_config
from simclr_jax.backbones import resnet
from simclr_jax.methods import heads
from simclr_jax.training import model as model_lib
from tests.support.helpers import count_params


def _abstract(fn):
  return nnx.eval_shape(fn)


@functools.lru_cache(maxsize=None)
def _abstract_trunk(depth, width=1.0):
  return _abstract(lambda: resnet.ResNet(depth, width, rngs=nnx.Rngs(0)))


# ---------------------------------------------------------------------------------------
# Parameter counts (documented: torchvision's resnet50 has 25,557,032 parameters including
# its 2048 -> 1000 fc layer (2,049,000), so 23,508,032 for the trunk; resnet18: 11,689,512
# including fc 512 -> 1000 (513,000), so 11,176,512).
# ---------------------------------------------------------------------------------------


def test_count_params_works_on_abstract_state():
  abstract = _abstract(lambda: heads.MLP(8, (4, 2), batch_norm=False, rngs=nnx.Rngs(0)))
  concrete = heads.MLP(8, (4, 2), batch_norm=False, rngs=nnx.Rngs(0))
  assert count_params(abstract) == count_params(concrete) == 8 * 4 + 4 + 4 * 2 + 2


def test_resnet50_trunk_param_count():
  trunk = _abstract_trunk(50)
  assert count_params(trunk) == 23_508_032
  assert trunk.num_features == 2048


def test_resnet18_trunk_param_count():
  trunk = _abstract_trunk(18)
  assert count_params(trunk) == 11_176_512
  assert trunk.num_features == 512


def test_seed_head_param_count():
  head = _abstract(lambda: heads.MLP(2048, (512, 128), batch_norm=False, rngs=nnx.Rngs(0)))
  assert count_params(head) == 1_114_752
  assert count_params(head) == 2048 * 512 + 512 + 512 * 128 + 128


def test_simclr_v2_head_param_count():
  widths = (2048, 2048, 128)
  head = _abstract(lambda: heads.MLP(2048, widths, batch_norm=True, rngs=nnx.Rngs(0)))
  dims = (2048, *widths)
  kernels = sum(a * b for a, b in zip(dims[:-1], dims[1:]))    # No linear biases.
  bn_scales = sum(widths)
  bn_biases = sum(widths[:-1])                                 # Last BN has no shift.
  assert count_params(head) == kernels + bn_scales + bn_biases
  state = nnx.state(head, nnx.Param)
  pure = nnx.to_pure_dict(state)
  assert all(set(layer) == {"kernel"} for layer in pure["linears"].values())
  assert set(pure["norms"][2]) == {"scale"}


def test_batch_stats_are_not_counted():
  head = _abstract(lambda: heads.MLP(16, (8, 4), batch_norm=True, rngs=nnx.Rngs(0)))
  stats = sum(x.size for x in jax.tree.leaves(nnx.state(head, nnx.BatchStat)))
  assert stats == 2 * (8 + 4)
  assert count_params(head) == 16 * 8 + 8 * 4 + (8 + 8) + 4


@pytest.mark.parametrize("depth,width,features", [(50, 2.0, 4096), (50, 0.5, 1024),
                                                  (18, 2.0, 1024)])
def test_width_multiplier_scales_num_features(depth, width, features):
  trunk = _abstract_trunk(depth, width)
  assert trunk.num_features == features
  # A wider trunk has about width**2 times as many parameters.
  base = _abstract_trunk(depth)
  ratio = count_params(trunk) / count_params(base)
  assert 0.8 * width**2 < ratio < 1.2 * width**2


@pytest.mark.parametrize("depth", (0, 20, 49, 200))
def test_invalid_depth_raises(depth):
  with pytest.raises(ValueError):
    resnet.ResNet(depth, rngs=nnx.Rngs(0))


def test_empty_head_widths_raises():
  with pytest.raises(ValueError):
    heads.MLP(8, (), batch_norm=False, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------
# Forward passes on tiny models.
# ---------------------------------------------------------------------------------------


def _tiny_config(small_image_stem, head_widths=(32, 16), head_batch_norm=True):
  config = default_config.get_config()
  config.compute_dtype = "float32"
  config.model.depth = 18
  config.model.width_multiplier = 0.125
  config.model.small_image_stem = small_image_stem
  config.simclr.head_widths = head_widths
  config.simclr.head_batch_norm = head_batch_norm
  return config


# (small_image_stem, image size, head widths, head BatchNorm). Initialising even a tiny
# model compiles one random op per parameter shape (slow on CPU), so each is built once
# per module and cloned by the tests that use it.
TINY = {
    "cifar_stem": (True, 16, (32, 16), True),
    "imagenet_stem": (False, 32, (32, 16), False),
}
BATCH = 4


@pytest.fixture(scope="module")
def tiny_models():
  built = {}
  for name, (small, _, widths, bn) in TINY.items():
    built[name] = model_lib.build_model(_tiny_config(small, widths, bn), nnx.Rngs(0))
  return built


@functools.partial(nnx.jit, static_argnames="train")
def _forward(model, images, train):
  """SimCLR's model: (features, embeddings)."""
  features = model.encoder(images, train=train)
  return features, model.head(features, train=train)


def _images(batch, size, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3), jnp.float32)


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_shapes(tiny_models, name):
  _, size, head_widths, _ = TINY[name]
  model = nnx.clone(tiny_models[name])
  assert model.encoder.num_features == 64
  for train in (True, False):
    features, z = _forward(model, _images(BATCH, size), train=train)
    assert features.shape == (BATCH, 64)
    assert z.shape == (BATCH, head_widths[-1])
    assert np.all(np.isfinite(np.asarray(features))) and np.all(np.isfinite(np.asarray(z)))
    # Features come after a ReLU and global average pooling: non-negative, not all zero.
    assert float(jnp.min(features)) >= 0.0 and float(jnp.max(features)) > 0.0


def test_stems_downsample_differently(tiny_models):
  small = tiny_models["cifar_stem"].encoder
  large = tiny_models["imagenet_stem"].encoder
  assert small.stem_conv.kernel.value.shape == (3, 3, 3, 8)
  assert large.stem_conv.kernel.value.shape == (7, 7, 3, 8)
  x = _images(2, 16)
  assert small.stem_conv(x).shape == (2, 16, 16, 8)
  assert large.stem_conv(x).shape == (2, 8, 8, 8)


def _batch_stats(module):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.BatchStat)))


def test_eval_mode_is_deterministic_and_keeps_batch_stats(tiny_models):
  model = nnx.clone(tiny_models["cifar_stem"])
  x = _images(BATCH, 16)
  before = _batch_stats(model)
  f1, z1 = _forward(model, x, train=False)
  f2, z2 = _forward(model, x, train=False)
  np.testing.assert_array_equal(np.asarray(f1), np.asarray(f2))
  np.testing.assert_array_equal(np.asarray(z1), np.asarray(z2))
  jax.tree.map(np.testing.assert_array_equal, before, _batch_stats(model))
  # Running statistics, not batch statistics: an image's output does not depend on the
  # rest of its batch.
  other = _images(BATCH, 16, seed=1)
  f3, z3 = _forward(model, jnp.concatenate([x[:1], other[1:]]), train=False)
  np.testing.assert_allclose(np.asarray(f3[0]), np.asarray(f1[0]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(z3[0]), np.asarray(z1[0]), rtol=1e-5, atol=1e-6)


def test_train_mode_uses_batch_statistics(tiny_models):
  model = nnx.clone(tiny_models["cifar_stem"])
  x = _images(BATCH, 16)
  other = _images(BATCH, 16, seed=1)
  _, z1 = _forward(model, x, train=True)
  _, z3 = _forward(model, jnp.concatenate([x[:1], other[1:]]), train=True)
  assert not np.allclose(np.asarray(z1[0]), np.asarray(z3[0]), atol=1e-4)


def test_train_mode_updates_running_stats_with_momentum_0_9(tiny_models):
  model = nnx.clone(tiny_models["cifar_stem"])
  bn = model.encoder.stem_bn
  head_bn = model.head.norms[0]
  np.testing.assert_array_equal(np.asarray(bn.mean.value), 0.0)
  np.testing.assert_array_equal(np.asarray(bn.var.value), 1.0)

  mean, var = np.zeros(8), np.ones(8)
  head_mean, head_var = np.zeros(32), np.ones(32)
  for seed in (1, 2):
    x = _images(BATCH, 16, seed=seed)
    # Batch statistics of the stem convolution's output (its kernel is not trained here).
    y = np.asarray(model.encoder.stem_conv(x), np.float64)
    batch_mean = y.mean(axis=(0, 1, 2))
    batch_var = y.var(axis=(0, 1, 2))  # Flax keeps the biased batch variance.
    features, _ = _forward(model, x, train=True)
    h = np.asarray(model.head.linears[0](features), np.float64)
    mean = 0.9 * mean + 0.1 * batch_mean
    var = 0.9 * var + 0.1 * batch_var
    head_mean = 0.9 * head_mean + 0.1 * h.mean(axis=0)
    head_var = 0.9 * head_var + 0.1 * h.var(axis=0)
    np.testing.assert_allclose(np.asarray(bn.mean.value), mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var.value), var, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(head_bn.mean.value), head_mean, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(head_bn.var.value), head_var, rtol=1e-4,
                               atol=1e-6)
  # Every BatchNorm in the model moved away from its initial (0, 1).
  for path, value in jax.tree_util.tree_leaves_with_path(_batch_stats(model)):
    init = 0.0 if path[-1].key == "mean" else 1.0
    assert not np.allclose(value, init), path


# ---------------------------------------------------------------------------------------
# The other methods' heads and the zero-initialised residual option.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("last_norm,last_keys,last_bias", [
    ("scale", {"scale"}, False),            # SimCLR v2.
    ("standardize", None, False),           # MoCo v3: BatchNorm1d(affine=False).
    ("none", None, True),                   # BYOL, VICReg: a plain last linear layer.
])
def test_mlp_last_layer_variants(last_norm, last_keys, last_bias):
  head = heads.MLP(6, (5, 3), batch_norm=True, rngs=nnx.Rngs(0), last_norm=last_norm)
  pure = nnx.to_pure_dict(nnx.state(head, nnx.Param))
  assert set(pure["linears"][1]) == ({"kernel", "bias"} if last_bias else {"kernel"})
  assert set(pure["linears"][0]) == {"kernel"}  # BatchNorm follows: no bias.
  norms = pure.get("norms", {})
  assert set(norms[0]) == {"scale", "bias"}
  if last_keys is None:
    assert 1 not in norms
  else:
    assert set(norms[1]) == last_keys
  x = jax.random.normal(jax.random.key(0), (64, 6))
  y = np.asarray(head(x, train=True), np.float64)
  if last_norm == "standardize":  # Zero mean and unit variance per feature over the batch.
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-3)
  has_last_stats = 1 in nnx.to_pure_dict(nnx.state(head, nnx.BatchStat))["norms"]
  assert has_last_stats == (last_norm != "none")


@pytest.mark.parametrize("depth,last", [(18, "bn2"), (50, "bn3")])
def test_zero_init_residual_zeroes_each_blocks_last_batchnorm_scale(depth, last):
  model = resnet.ResNet(depth, 0.0625, small_image_stem=True, zero_init_residual=True,
                        rngs=nnx.Rngs(0))
  default = resnet.ResNet(depth, 0.0625, small_image_stem=True, rngs=nnx.Rngs(0))
  for block, plain in zip(model.blocks, default.blocks):
    np.testing.assert_array_equal(np.asarray(getattr(block, last).scale.value), 0.0)
    np.testing.assert_array_equal(np.asarray(getattr(plain, last).scale.value), 1.0)
    np.testing.assert_array_equal(np.asarray(block.bn1.scale.value), 1.0)
  # Each residual branch then adds nothing: a block is relu(x + shortcut(x)).
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  h = nnx.relu(model.stem_bn(model.stem_conv(x), use_running_average=True))
  block = model.blocks[0]
  residual = h if block.shortcut is None else block.shortcut(h, False)
  np.testing.assert_allclose(np.asarray(block(h, False)), np.asarray(nnx.relu(residual)),
                             atol=1e-6)


def test_a_registered_backbone_exports_and_loads_with_no_other_change(pretrained_workdir,
                                                                      tmp_path):
  """The backbone contract: a family is one module plus a registry line. The toy backbone
  (tests/support/toy_backbone.py: pooled pixels through an MLP, no PyTorch model) is the
  tiny configs' (tests/support/helpers.py), so every stage's tests run on a registered
  backbone; here its pretraining summary, export (no PyTorch layout, said why) and
  load_encoder, from conftest's one-step workdir."""
  import json  # pylint: disable=g-import-not-at-top

  from simclr_jax import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax.stages import export  # pylint: disable=g-import-not-at-top
  from tests.support import toy_backbone  # pylint: disable=g-import-not-at-top
  from tests.support.helpers import tiny_food101_config  # pylint: disable=g-import-not-at-top

  pretrained = json.loads((pretrained_workdir / "pretrain_summary.json").read_text())
  assert pretrained["step"] == 1 and pretrained["params_encoder"] == (
      4 * 4 * 3 * toy_backbone.HIDDEN + 2 * toy_backbone.HIDDEN
      + toy_backbone.HIDDEN * toy_backbone.FEATURES)
  config = tiny_food101_config()
  config.export.pretrain_workdir = str(pretrained_workdir)
  exported = export.export_encoder(config, str(tmp_path / "export"))
  meta = json.loads((tmp_path / "export" / "export" / "encoder.json").read_text())
  assert exported["layout"] == meta["layout"] == "simclr_jax"
  assert meta["architecture"] == "toy_mlp: 4x4 pooled pixels, MLP 32-16"
  assert "PyTorch has no model of the 'toy_mlp' backbone" in meta["layout_reason"]
  encoder = encoder_lib.load_encoder(str(pretrained_workdir))
  features = encoder(np.zeros((2, 16, 16, 3), np.uint8))
  assert features.shape == (2, toy_backbone.FEATURES)
  assert repr(encoder).startswith("Encoder(toy_mlp: 4x4 pooled pixels")
