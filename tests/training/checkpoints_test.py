"""Damaged and mismatched checkpoints: warn and fall back, or stop with the fields named."""

import logging
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from simclr_jax import sharding
from simclr_jax.stages import pretrain
from simclr_jax.training import checkpoints
from simclr_jax.training import state as state_lib
from tests.conftest import MOCK_EXAMPLES
from tests.support import paths
from tests.support.helpers import tiny_food101_config


def _copy(workdir, tmp_path):
  copy = tmp_path / "work"
  shutil.copytree(workdir, copy)
  return copy


def _restore(workdir, config=None, step=None):
  """(step, TrainState) restored by the code that pretraining uses to resume."""
  config = config or tiny_food101_config()
  tx, _ = state_lib.create_optimizer(config, 2, 3)
  target = state_lib.init_train_state(config, tx, sharding.create_mesh())
  with checkpoints.create_manager(checkpoints.checkpoint_dir(workdir)) as manager:
    restored = checkpoints.restore(manager, target.checkpoint_items(), config, step,
                                   check_fields=pretrain.resume_fields(config))
  return restored[0], state_lib.TrainState.from_checkpoint_items(restored[1])


def _truncate_files(folder):
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)


def _delete_array_files(folder):
  """Every OCDBT data folder (a process's, and the merged `d/` of small arrays)."""
  for root, dirs, _ in os.walk(folder, topdown=False):
    for name in dirs:
      if name.startswith("ocdbt.process_") or name == "d":
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _unfinished_save(folder):
  """What a kill during the save of step 2 leaves: its temporary folder, half written."""
  unfinished = folder.parent / f"2{checkpoints.UNFINISHED_MARKER}-1796000000"
  folder.rename(unfinished)
  _truncate_files(unfinished / "model")


@pytest.mark.parametrize("damage", [_truncate_files, _delete_array_files, _unfinished_save])
def test_damaged_latest_checkpoint_warns_and_falls_back(two_step_workdir, tmp_path, caplog,
                                                         damage):
  workdir = _copy(two_step_workdir, tmp_path)
  _, intact = _restore(workdir, step=1)
  damage(workdir / "checkpoints" / "2")
  with caplog.at_level(logging.WARNING):
    step, state = _restore(workdir)
  assert step == 1 and int(state.step) == 1
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(intact)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert str(workdir / "checkpoints" / "2") in warnings
  assert ("unreadable" in warnings) or ("unfinished save" in warnings)


def test_pretraining_resumes_from_the_newest_readable_checkpoint(two_step_workdir, tmp_path):
  workdir = _copy(two_step_workdir, tmp_path)
  _truncate_files(workdir / "checkpoints" / "2")
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    summary = pretrain.pretrain(tiny_food101_config(num_train_steps=3), str(workdir))
  assert summary["resumed_from_step"] == 1 and summary["step"] == 3
  # The damaged step 2 was moved aside (kept), and saved anew by the resumed run.
  assert [p.name.split("-")[0] for p in (workdir / "checkpoints_damaged").iterdir()] == ["2"]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2", "3"]


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(two_step_workdir, tmp_path):
  workdir = _copy(two_step_workdir, tmp_path)
  for step in ("1", "2"):
    _truncate_files(workdir / "checkpoints" / step)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"No readable checkpoint in .*step 2: .*step 1: "):
      pretrain.pretrain(tiny_food101_config(num_train_steps=3), str(workdir))


def test_a_checkpoint_of_another_model_names_the_differing_fields(two_step_workdir):
  config = tiny_food101_config()
  config.model.hidden = 64
  config.simclr.head_widths = (64, 16)
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    _restore(two_step_workdir, config)
  message = str(error.value)
  assert "model.hidden: checkpoint 32, config 64" in message
  assert "simclr.head_widths: checkpoint [32, 16], config [64, 16]" in message
  assert "model.features" not in message and "\n" not in message
  # The file its pretraining run wrote (simclr_jax/config_text.py), which --config reads.
  assert f"rerun with --config={two_step_workdir}/config/pretrain.py" in message


def test_a_checkpoint_of_another_structure_is_a_mismatch_not_damage(two_step_workdir, tmp_path):
  """The same config fields but another tree (a checkpoint of an older version's heads):
  one error naming it, and no readable step moved aside as damaged."""
  workdir = _copy(two_step_workdir, tmp_path)
  config = tiny_food101_config()
  tx, _ = state_lib.create_optimizer(config, 2, 3)
  items = state_lib.init_train_state(config, tx, sharding.create_mesh()).checkpoint_items()
  items["model"]["params"]["head"]["extra_bias"] = jax.numpy.zeros(2)
  with checkpoints.create_manager(checkpoints.checkpoint_dir(workdir)) as manager:
    with pytest.raises(checkpoints.CheckpointMismatchError, match="another structure"):
      checkpoints.restore(manager, items, config, check_fields=pretrain.resume_fields(config),
                          move_damaged=True)
    assert sorted(manager.all_steps()) == [1, 2]


def test_learning_rate_multipliers_are_checked_and_a_field_newer_than_the_checkpoint_is_off(
    two_step_workdir):
  """Multipliers shape the optimiser's state: adding them to a run is a named mismatch. A
  checkpoint saved before the field existed resumes while the field is off (empty)."""
  config = tiny_food101_config()
  config.optimizer.learning_rate_multipliers = (("^head/", 10.0),)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"optimizer.learning_rate_multipliers: checkpoint \[\], config "):
    _restore(two_step_workdir, config)
  saved = {"optimizer": {"name": "lars"}}  # No learning_rate_multipliers: an older config.
  fields = ("optimizer.",)
  checkpoints._check_same_fields(saved, {"optimizer": {"name": "lars",  # pylint: disable=protected-access
                                                       "learning_rate_multipliers": []}},
                                 fields, "ckpt")
  with pytest.raises(checkpoints.CheckpointMismatchError, match="checkpoint None, config"):
    checkpoints._check_same_fields(  # pylint: disable=protected-access
        saved, {"optimizer": {"name": "lars", "learning_rate_multipliers": [["^p", 2.0]]}},
        fields, "ckpt")


# The fine-tuning optimiser's fields added with the ViT (AdamW, clipping, freezing, layer
# decay): a fine-tuning checkpoint written before them lacks all five.
FIELDS_ADDED_WITH_THE_VIT = ("adam_betas", "adam_epsilon", "gradient_clip_norm",
                             "frozen_patterns", "layer_decay")


def test_a_finetuning_checkpoint_from_before_the_vit_fields_resumes_with_their_defaults():
  """The defaults of the fields added later compute what the code did before them, so a
  checkpoint without them resumes; layer decay switched on is a named mismatch."""
  from simclr_jax.stages import finetune  # pylint: disable=g-import-not-at-top
  config = tiny_food101_config()
  saved = checkpoints.config_json(config)
  for name in FIELDS_ADDED_WITH_THE_VIT:
    del saved["finetune"]["optimizer"][name]
  fields = finetune.resume_fields(config)
  checkpoints._check_same_fields(saved, checkpoints.config_json(config), fields, "ckpt")  # pylint: disable=protected-access
  config.finetune.optimizer.layer_decay = 0.65
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match="finetune.optimizer.layer_decay: checkpoint None, config 0.65"):
    checkpoints._check_same_fields(saved, checkpoints.config_json(config), fields, "ckpt")  # pylint: disable=protected-access


def test_resuming_with_another_optimiser_is_named(two_step_workdir):
  config = tiny_food101_config()
  config.optimizer.name = "sgd"
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match="optimizer.name: checkpoint 'lars', config 'sgd'"):
    _restore(two_step_workdir, config)


def _checkpoint_before_the_folders(folder):
  """tests/support/files/simclr_checkpoint_f193c55.tar.gz, written at f193c55 before the
  modules moved into stages/, training/ and evaluation/ (tests/support/files/
  make_simclr_checkpoint.py): a ResNet SimCLR run's checkpoints 1 and 2, unpacked in folder."""
  import tarfile  # pylint: disable=g-import-not-at-top
  with tarfile.open(str(paths.FILES / "simclr_checkpoint_f193c55.tar.gz")) as tar:
    tar.extractall(folder, filter="data")


def test_a_checkpoint_of_the_layout_before_the_folders_loads_its_encoder(tmp_path):
  from simclr_jax import load_encoder  # pylint: disable=g-import-not-at-top
  _checkpoint_before_the_folders(tmp_path)
  encoder = load_encoder(str(tmp_path))
  assert encoder.step == 2
  features = encoder(np.zeros((2, 16, 16, 3), np.uint8))
  assert features.shape == (2, encoder.num_features) and np.isfinite(features).all()


@pytest.mark.slow  # 25 s: it compiles the ResNet's training step.
def test_a_checkpoint_of_the_layout_before_the_folders_resumes(tmp_path):
  """Pretraining resumes from its step 2 to step 3."""
  from tests.support.helpers import tiny_method_config, tiny_resnet_config  # pylint: disable=g-import-not-at-top
  _checkpoint_before_the_folders(tmp_path)
  config = tiny_method_config("simclr", num_train_steps=3, checkpoint_every_steps=2)
  config.model = tiny_resnet_config().model  # The checkpoint's ResNet.
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    summary = pretrain.pretrain(config, str(tmp_path))
  assert summary["resumed_from_step"] == 2 and summary["step"] == 3
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints")) == [2, 3]


def test_adopt_fields_takes_the_checkpoint_s_values_under_the_prefixes_only():
  config = tiny_food101_config()
  saved = checkpoints.config_json(config)
  saved["model"]["hidden"] = 8
  del saved["model"]["features"]  # A field newer than the checkpoint: the config's.
  saved["simclr"]["head_widths"] = [8, 4]
  saved["augment"]["normalize"] = True
  saved["batch_size"] = 3  # Not under the prefixes.
  adopted, differing = checkpoints.adopt_fields(config, saved, ("model.", "simclr.head_",
                                                                "augment.normalize"))
  assert differing == [("augment.normalize", True, False), ("model.hidden", 8, 32),
                       ("simclr.head_widths", (8, 4), (32, 16))]
  assert (adopted.model.hidden, adopted.model.features) == (8, config.model.features)
  assert adopted.simclr.head_widths == (8, 4) and adopted.augment.normalize
  assert adopted.batch_size == config.batch_size and config.model.hidden == 32
