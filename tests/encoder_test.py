"""load_encoder: the pretrained encoder from a workdir alone, the same features as the
stages' encoder, on one device whatever saved it, without TensorFlow."""

import os
import shutil

import jax
import numpy as np
import pytest

import simclr_jax
from simclr_jax import encoder as encoder_lib
from simclr_jax import sharding
from simclr_jax.evaluation import encoding
from simclr_jax.training import checkpoints
from simclr_jax.training import model as model_lib
from tests.support import paths
from tests.support import toy_backbone
from tests.support.helpers import TOY_BACKBONE, probed_config, tiny_food101_config

ROOT = str(paths.REPO)
@pytest.fixture
def byol_workdir(probed_workdir):
  """BYOL with the online probe, checkpoints at steps 1 and 2 (shared: copy before writing)."""
  return probed_workdir("byol")


def _byol_config():
  return probed_config("byol")


def _images(n=5, size=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), np.uint8)


def _stage_features(config, workdir, images, num_probe_classes=0, step=None):
  """(step, features) of the encoder as linear_eval restores and runs it (8 devices)."""
  mesh = sharding.create_mesh()
  restored_step, model = model_lib.restore_model(config, str(workdir), mesh, num_probe_classes,
                                                 step)
  encode = encoding.make_encoder(model_lib.model_graphdef(config, num_probe_classes),
                                 config.augment.normalize)
  return restored_step, np.asarray(encode(model["params"], model["batch_stats"], images)), model


def test_load_encoder_gives_the_stages_features_on_one_device(pretrained_workdir):
  config = tiny_food101_config()
  images = _images()
  step, expected, model = _stage_features(config, pretrained_workdir, images)
  encoder = simclr_jax.load_encoder(str(pretrained_workdir))

  assert encoder.step == step == 1 and encoder.num_features == toy_backbone.FEATURES
  features = encoder(images)
  assert features.shape == (5, toy_backbone.FEATURES) and features.dtype == np.float32
  np.testing.assert_allclose(np.asarray(features), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(encoder(jax.numpy.asarray(images))), expected,
                             rtol=1e-6, atol=1e-6)
  # The config is the checkpoint's, as a ConfigDict, equal in every model field.
  saved = checkpoints.config_json(config)
  assert encoder.config.model.to_dict() == saved["model"]
  assert encoder.config.augment.to_dict() == saved["augment"]
  assert encoder.config.model.name == TOY_BACKBONE and encoder.config.method == "simclr"
  # Only the encoder, restored as saved, on one device (it was saved from 8).
  for ours, theirs in ((encoder.params, model["params"]["encoder"]),
                       (encoder.batch_stats, model["batch_stats"]["encoder"])):
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
      assert len(a.sharding.device_set) == 1
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_encoder_of_byol_with_a_probe_at_a_given_step(byol_workdir):
  """The heads and the probe (101 classes, unknown to load_encoder) are not needed."""
  config = _byol_config()
  images = _images(seed=1)
  newest = encoder_lib.load_encoder(byol_workdir)
  first = encoder_lib.load_encoder(str(byol_workdir), step=1)
  assert (newest.step, first.step) == (2, 1) and newest.config.method == "byol"
  for step, encoder in ((1, first), (2, newest)):
    _, expected, _ = _stage_features(config, byol_workdir, images, 101, step)
    np.testing.assert_allclose(np.asarray(encoder(images)), expected, rtol=1e-6, atol=1e-6)
  assert max(np.abs(a - b).max() for a, b in zip(
      jax.tree.leaves(newest.params), jax.tree.leaves(first.params))) > 0


def test_no_checkpoint_is_a_no_checkpoint_error(tmp_path, pretrained_workdir):
  with pytest.raises(checkpoints.NoCheckpointError,
                     match=r"No pretraining checkpoint in \S+ \(none\)\."):
    encoder_lib.load_encoder(str(tmp_path))
  with pytest.raises(checkpoints.NoCheckpointError, match=r"at step 99 .*steps \[1\]"):
    encoder_lib.load_encoder(str(pretrained_workdir), step=99)


def _truncate_files(folder):
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)


def test_a_damaged_newest_step_falls_back_and_none_readable_is_an_error(byol_workdir,
                                                                         tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(byol_workdir, workdir)
  _truncate_files(workdir / "checkpoints" / "2" / "model")
  assert encoder_lib.load_encoder(str(workdir)).step == 1
  _truncate_files(workdir / "checkpoints" / "1" / "model")
  with pytest.raises(checkpoints.CheckpointError, match="No readable checkpoint"):
    encoder_lib.load_encoder(str(workdir))
  with pytest.raises(checkpoints.CheckpointError, match="step 2"):
    encoder_lib.load_encoder(str(workdir), step=2)


def test_wrong_images_are_a_clear_error(pretrained_workdir):
  encoder = encoder_lib.load_encoder(str(pretrained_workdir))
  with pytest.raises(ValueError, match=r"uint8 images, got shape \(2, 16, 16, 3\) of float32"):
    encoder(np.zeros((2, 16, 16, 3), np.float32))
