"""The pretraining stage's config file: written once the run has started or resumed, and
named by a resume that is refused for another model."""

import re
import runpy
import shutil

import pytest
import tensorflow_datasets as tfds

from simclr_jax.stages import pretrain
from simclr_jax.training import checkpoints
from tests.conftest import MOCK_EXAMPLES
from tests.support.helpers import tiny_food101_config


def _load(path):
  return runpy.run_path(str(path))["get_config"]()


def test_resuming_with_another_model_names_the_config_file_that_resumes(pretrained_workdir,
                                                                         tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(pretrained_workdir, workdir)
  config_file = workdir / "config" / "pretrain.py"
  assert _load(config_file).to_dict() == tiny_food101_config().to_dict()

  other = tiny_food101_config(num_train_steps=2)
  other.model.hidden = 64
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match=r"model.hidden: checkpoint 32, config 64\. To resume, rerun with "
                             rf"--config={re.escape(str(config_file))} \(the config it was "
                             r"made with\), or use a fresh --workdir\.$"):
      pretrain.pretrain(other, str(workdir))
    # The refused run left the file alone, and the file resumes.
    written = _load(config_file)
    written.num_train_steps = 2
    summary = pretrain.pretrain(written, str(workdir))
  assert (summary["resumed_from_step"], summary["step"]) == (1, 2)
  assert _load(config_file).num_train_steps == 2
