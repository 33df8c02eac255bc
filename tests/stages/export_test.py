"""The export stage: torchvision's names and layouts checked against a NumPy ResNet that
follows torchvision's definition, the project's layout for other encoders, encoder.json,
and the extracted features of whole splits."""

import json
import logging
import runpy

import jax
import numpy as np
import pytest
import safetensors.numpy
import tensorflow_datasets as tfds
from flax import nnx
from jax.sharding import Mesh

from simclr_jax import backbones, precision, sharding
from simclr_jax import encoder as encoder_lib
from simclr_jax.backbones import resnet
from simclr_jax.data import input_pipeline
from simclr_jax.evaluation import encoding
from simclr_jax.stages import export, extract_features
from simclr_jax.training import checkpoints
from simclr_jax.training import model as model_lib
from tests.conftest import MOCK_EXAMPLES
from tests.support import toy_backbone
from tests.support.helpers import tiny_food101_config, tiny_resnet_config

# torchvision.models.resnet{depth}: (Bottleneck?, blocks per layer), written from its
# definitions rather than from this project's tables.
TORCHVISION_RESNETS = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)),
                       50: (True, (3, 4, 6, 3)), 101: (True, (3, 4, 23, 3)),
                       152: (True, (3, 8, 36, 3))}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_keys(depth):
  """torchvision's resnet{depth}().state_dict() keys without fc.weight and fc.bias."""
  bottleneck, layers = TORCHVISION_RESNETS[depth]
  keys = ["conv1.weight"] + [f"bn1.{k}" for k in BN_KEYS]
  for i, blocks in enumerate(layers, 1):
    for j in range(blocks):
      for c in range(1, 4 if bottleneck else 3):
        keys += [f"layer{i}.{j}.conv{c}.weight"] + [f"layer{i}.{j}.bn{c}.{k}" for k in BN_KEYS]
      if j == 0 and (i > 1 or bottleneck):  # Strided, or 64 -> 256 channels.
        keys += [f"layer{i}.{j}.downsample.0.weight"]
        keys += [f"layer{i}.{j}.downsample.1.{k}" for k in BN_KEYS]
  return keys


def _perturb_batch_norm(tree, rng, scale_name, shift_name, low, high):
  """Every BatchNorm of an encoder's params or batch_stats with random values, so that it
  matters."""
  if scale_name in tree:
    return {**tree, scale_name: rng.uniform(low, high, tree[scale_name].shape).astype(np.float32),
            shift_name: rng.normal(0, 0.2, tree[shift_name].shape).astype(np.float32)}
  return {key: _perturb_batch_norm(value, rng, scale_name, shift_name, low, high)
          if isinstance(value, dict) else value for key, value in tree.items()}


def _write_checkpoint(workdir, config, step):
  """A checkpoint of `config`'s randomly initialised model with non-trivial BatchNorm
  scales, biases and statistics, as pretraining saves it (on one device)."""
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  model = jax.device_get(model_lib.init_model(config, mesh))
  rng = np.random.default_rng(step)
  model["params"]["encoder"] = _perturb_batch_norm(model["params"]["encoder"], rng, "scale",
                                                   "bias", 0.5, 1.5)
  model["batch_stats"]["encoder"] = _perturb_batch_norm(model["batch_stats"]["encoder"], rng,
                                                        "var", "mean", 0.5, 2.0)
  model = jax.device_put(model, jax.devices()[0])
  with checkpoints.create_manager(checkpoints.checkpoint_dir(workdir)) as manager:
    checkpoints.save(manager, step, {"model": model}, config)
    manager.wait_until_finished()


def _export(tmp_path, config, step):
  """(summary, tensors, encoder.json) of the export of a fresh checkpoint of `config`."""
  _write_checkpoint(tmp_path / "pretrain", config, step)
  config.export.pretrain_workdir = str(tmp_path / "pretrain")
  summary = export.export_encoder(config, str(tmp_path / "out"))
  folder = tmp_path / "out" / "export"
  tensors = safetensors.numpy.load_file(str(folder / "encoder.safetensors"))
  return summary, tensors, json.loads((folder / "encoder.json").read_text())


# --------------------------------------------------------------- NumPy torchvision ResNet


def _conv(x, weight, stride, padding):
  """(N, C, H, W) x (O, C, kh, kw) -> (N, O, H', W'): explicit zero padding, im2col, einsum."""
  kh, kw = weight.shape[2:]
  x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  patches = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
  patches = patches[:, :, ::stride, ::stride]  # (N, C, H', W', kh, kw)
  return np.einsum("nchwij,ocij->nohw", patches, weight, optimize=True)


def _bn(x, t, name):
  """BatchNorm2d in eval mode (eps 1e-5)."""
  shape = (1, -1, 1, 1)
  inv = t[f"{name}.weight"].reshape(shape) / np.sqrt(t[f"{name}.running_var"].reshape(shape) + 1e-5)
  return (x - t[f"{name}.running_mean"].reshape(shape)) * inv + t[f"{name}.bias"].reshape(shape)


def _relu(x):
  return np.maximum(x, 0)


def _max_pool(x):
  """MaxPool2d(kernel_size=3, stride=2, padding=1): padding never wins."""
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(
      axis=(-2, -1))


def torchvision_resnet_features(t, x, depth):
  """torchvision's ResNet.forward up to the average pool, on float64 (N, 3, H, W) input,
  reading only `t`'s tensors by their torchvision names."""
  bottleneck, layers = TORCHVISION_RESNETS[depth]
  t = {name: value.astype(np.float64) for name, value in t.items()}
  x = _max_pool(_relu(_bn(_conv(x, t["conv1.weight"], 2, 3), t, "bn1")))
  for i, blocks in enumerate(layers, 1):
    for j in range(blocks):
      p, stride = f"layer{i}.{j}", 2 if i > 1 and j == 0 else 1
      if bottleneck:  # v1.5: the stride on the 3x3 convolution.
        y = _relu(_bn(_conv(x, t[f"{p}.conv1.weight"], 1, 0), t, f"{p}.bn1"))
        y = _relu(_bn(_conv(y, t[f"{p}.conv2.weight"], stride, 1), t, f"{p}.bn2"))
        y = _bn(_conv(y, t[f"{p}.conv3.weight"], 1, 0), t, f"{p}.bn3")
      else:
        y = _relu(_bn(_conv(x, t[f"{p}.conv1.weight"], stride, 1), t, f"{p}.bn1"))
        y = _bn(_conv(y, t[f"{p}.conv2.weight"], 1, 1), t, f"{p}.bn2")
      if f"{p}.downsample.0.weight" in t:
        x = _bn(_conv(x, t[f"{p}.downsample.0.weight"], stride, 0), t, f"{p}.downsample.1")
      x = _relu(y + x)
  return x.mean(axis=(2, 3))  # AdaptiveAvgPool2d((1, 1)) + flatten; fc dropped.


# --------------------------------------------------------------------------- the tests


def _resnet18_config():
  config = tiny_resnet_config()
  config.model.update(depth=18, width_multiplier=1.0, small_image_stem=False)
  config.augment.image_size = 64
  config.augment.normalize = True
  return config


def test_resnet18_exports_as_torchvisions_and_computes_its_features(tmp_path):
  config = _resnet18_config()
  summary, tensors, meta = _export(tmp_path, config, step=7)

  assert sorted(tensors) == sorted(torchvision_keys(18))
  assert tensors["conv1.weight"].shape == (64, 3, 7, 7)
  assert tensors["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
  assert tensors["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
  for name, value in tensors.items():
    if name.endswith("num_batches_tracked"):
      assert value.shape == () and value.dtype == np.int64 and value == 7
    else:
      assert value.dtype == np.float32
  assert meta["layout"] == "torchvision" and meta["architecture"] == "resnet18"
  assert meta["normalize"] == {"enabled": True, "mean": list(precision.IMAGENET_MEAN),
                               "std": list(precision.IMAGENET_STD)}
  assert (meta["num_features"], meta["checkpoint_step"], meta["image_size"]) == (512, 7, 64)
  backbone = meta["backbone"]
  assert meta["method"] == "simclr" and backbone["depth"] == 18
  assert backbone["name"] == "resnet" and not backbone["small_image_stem"]
  assert "float32 rounding" in meta["agreement"]  # The tolerance asserted below.
  assert "model = torchvision.models.resnet18()" in meta["pytorch"]
  assert json.loads((tmp_path / "out" / "export.json").read_text()) == summary
  assert summary["layout"] == "torchvision" and summary["num_tensors"] == len(tensors)

  # The features of torchvision's ResNet-18 on the exported tensors, input as encoder.json
  # says, are this project's.
  images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), np.uint8)
  x = (images / 255.0 - np.array(meta["normalize"]["mean"])) / np.array(meta["normalize"]["std"])
  reference = torchvision_resnet_features(tensors, x.transpose(0, 3, 1, 2), 18)
  features = np.asarray(encoder_lib.load_encoder(config.export.pretrain_workdir)(images))
  assert features.shape == reference.shape == (2, 512)
  assert reference.std() > 0.1  # BatchNorm's random statistics did not flatten it.
  np.testing.assert_allclose(features, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


@pytest.mark.parametrize("depth", sorted(TORCHVISION_RESNETS))
def test_name_table_covers_torchvisions_resnets(depth):
  names = [name for _, name, _ in resnet.torchvision_name_table(depth)]
  expected = {key.rsplit(".", 1)[0] for key in torchvision_keys(depth)}
  assert len(names) == len(set(names)) and set(names) == expected


def test_resnet50_names_shapes_and_parameter_count():
  """Every project variable has its torchvision tensor; 23,508,032 parameters without fc."""
  config = tiny_resnet_config()
  config.model.update(depth=50, width_multiplier=1.0, small_image_stem=False)
  abstract = nnx.eval_shape(lambda: backbones.create(config, nnx.Rngs(0)))
  _, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  zeros = lambda tree: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), nnx.to_pure_dict(tree))
  tensors = resnet.torchvision_state_dict(zeros(params), zeros(stats), 50, 3)
  assert sorted(tensors) == sorted(torchvision_keys(50))
  assert tensors["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
  assert tensors["layer3.5.conv3.weight"].shape == (1024, 256, 1, 1)
  assert tensors["layer4.0.conv2.weight"].shape == (512, 512, 3, 3)
  assert tensors["layer4.2.bn3.running_var"].shape == (2048,)
  trainable = [v.size for k, v in tensors.items()
               if k.endswith(".weight") or k.endswith(".bias")]
  assert sum(trainable) == 23_508_032
  assert sum(x.size for x in jax.tree.leaves(zeros(params))) == 23_508_032


def test_other_encoders_keep_the_projects_names(tmp_path):
  config = tiny_resnet_config()
  config.model.width_multiplier = 0.125  # 8 channels at the stem; small-image stem.
  config.augment.normalize = False
  summary, tensors, meta = _export(tmp_path, config, step=3)

  encoder = encoder_lib.load_encoder(config.export.pretrain_workdir)
  expected = {}
  for tree in (encoder.params, encoder.batch_stats):
    for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
      expected["/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(value)
  assert sorted(tensors) == sorted(expected)
  assert {"stem_conv/kernel", "stem_bn/scale", "stem_bn/mean", "blocks/0/bn1/var",
          "blocks/2/shortcut/conv/kernel", "blocks/7/conv2/kernel"} <= set(tensors)
  assert tensors["stem_conv/kernel"].shape == (3, 3, 3, 8)  # HWIO.
  for name, value in expected.items():
    np.testing.assert_array_equal(tensors[name], value)
  assert meta["layout"] == summary["layout"] == "simclr_jax"
  assert "width_multiplier=0.125" in meta["layout_reason"]
  assert meta["normalize"] == {"enabled": False, "mean": [0.0] * 3, "std": [1.0] * 3}
  assert meta["num_features"] == 64 and meta["backbone"]["width_multiplier"] == 0.125
  assert meta["backbone"]["small_image_stem"] and meta["image_size"] == 16
  assert meta["checkpoint_step"] == 3


def test_torchvision_mismatch_names_the_reason():
  config = _resnet18_config()
  assert resnet.torchvision_mismatch(config.model) is None
  config.model.small_image_stem = True
  assert "small-image stem" in resnet.torchvision_mismatch(config.model)


def test_feature_splits_and_their_file_names():
  config = tiny_food101_config()
  assert extract_features.feature_splits(config) == ("train", "validation")
  config.export.feature_splits = ("validation", "train[:10%]", "validation")
  assert extract_features.feature_splits(config) == ("validation", "train[:10%]")
  assert extract_features.file_stem("train[:10%]") == "train_10"


def test_extract_features_writes_every_example_of_each_split(pretrained_workdir, tmp_path,
                                                            caplog):
  """Also: a config whose model differs from pretraining's (the given one's: hidden width,
  head, input normalisation) extracts with the checkpoint's model, says so, and writes the
  config it ran with."""
  config = tiny_food101_config()
  given = tiny_food101_config()
  given.export.pretrain_workdir = str(pretrained_workdir)
  given.model.hidden = 2 * toy_backbone.HIDDEN
  given.simclr.head_widths = (64, 16)
  given.augment.normalize = not config.augment.normalize
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES), caplog.at_level(logging.INFO):
    summary = extract_features.extract_features(given, str(tmp_path))
    mesh = sharding.create_mesh()
    source = input_pipeline.create_source(config)
    encode = encoding.make_encoder(model_lib.model_graphdef(config), config.augment.normalize)
    _, model = model_lib.restore_model(config, str(pretrained_workdir), mesh)
    expected = {split: encoding.split_features(config, encode, encoding.EncoderState(**model),
                                               mesh, source, split)
                for split in ("train", "validation")}

  assert summary["checkpoint_step"] == 1 and summary["num_features"] == toy_backbone.FEATURES
  assert json.loads((tmp_path / "features" / "features.json").read_text()) == summary
  for split, (features, labels) in expected.items():
    assert summary["splits"][split]["num_examples"] == MOCK_EXAMPLES
    saved_features = np.load(tmp_path / "features" / f"{split}_features.npy")
    saved_labels = np.load(tmp_path / "features" / f"{split}_labels.npy")
    assert saved_features.shape == (MOCK_EXAMPLES, toy_backbone.FEATURES) and saved_features.dtype == np.float32
    assert saved_labels.shape == (MOCK_EXAMPLES,) and saved_labels.dtype == np.int32
    np.testing.assert_array_equal(saved_labels, labels)
    np.testing.assert_allclose(saved_features, features, rtol=1e-6, atol=1e-6)
  logged = [r.getMessage() for r in caplog.records if "Model from the checkpoint" in r.getMessage()]
  assert len(logged) == 1
  assert ("model.hidden=32 (config: 64), simclr.head_widths=(32, 16) (config: (64, 16))"
          in logged[0] and f"augment.normalize={config.augment.normalize!r}" in logged[0])
  written = runpy.run_path(str(tmp_path / "config" / "extract_features.py"))["get_config"]()
  assert written.model.hidden == 32 and written.simclr.head_widths == (32, 16)
  assert written.export.pretrain_workdir == str(pretrained_workdir)


def test_export_writes_the_config_of_the_checkpoint_s_model(pretrained_workdir, tmp_path):
  config = tiny_food101_config()
  config.model.hidden = 2 * toy_backbone.HIDDEN
  config.export.pretrain_workdir = str(pretrained_workdir)
  summary = export.export_encoder(config, str(tmp_path))
  written = runpy.run_path(str(tmp_path / "config" / "export.py"))["get_config"]()
  assert written.model.hidden == 32 and summary["num_features"] == toy_backbone.FEATURES
  assert written.export.pretrain_workdir == str(pretrained_workdir)
