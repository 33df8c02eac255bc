"""Test set-up: 8 simulated CPU devices; TensorFlow quiet, off accelerators, one intra-op
thread (as the entry points set it)."""

import os
import sys

# Must happen before JAX initialises its backend. (`make test` adds LLVM at level 0: see the
# Makefile.)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SIMCLR_NO_DISTRIBUTED", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_platforms", "cpu")

# Tests compile the same tiny programs many times (each stage builds its own jit); a
# persistent cache per session turns the repeats into cache hits.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.environ.get("TMPDIR", "/tmp"), "simclr_jax_test_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from simclr_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.support import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

input_pipeline.configure_tensorflow()  # As every entry point does, before TensorFlow runs.

# Fixtures of their own modules, registered here rather than imported where used (a linter
# would take such an import for an unused one): ram_root, fake_gcs.
pytest_plugins = ("tests.support.ram_fs", "tests.support.fake_gcs")

MOCK_EXAMPLES = 21  # Divides neither the batch (16) nor the 8 devices.


@pytest.fixture(scope="session")
def pretrained_workdir(tmp_path_factory):
  """A workdir holding one pretraining step of the tiny food101 config on mock data."""
  from simclr_jax.stages import pretrain  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("pretrained")
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    pretrain.pretrain(helpers.tiny_food101_config(), str(workdir))
  return workdir


@pytest.fixture(scope="session")
def two_step_workdir(pretrained_workdir, tmp_path_factory):
  """`pretrained_workdir` resumed to step 2 (checkpoints 1 and 2), once a session: the
  resume tests read it and copy it before writing."""
  import shutil  # pylint: disable=g-import-not-at-top

  from simclr_jax.stages import pretrain  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("two_steps") / "work"
  shutil.copytree(pretrained_workdir, workdir)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    pretrain.pretrain(helpers.tiny_food101_config(num_train_steps=2), str(workdir))
  return workdir


@pytest.fixture(scope="session")
def probed_workdir(tmp_path_factory):
  """method -> the workdir of 2 steps of `helpers.probed_config(method)` (checkpoints 1 and
  2), each method run once a session for every test that reads one."""
  from simclr_jax.stages import pretrain  # pylint: disable=g-import-not-at-top
  runs = {}

  def workdir_of(method: str):
    if method not in runs:
      runs[method] = tmp_path_factory.mktemp(f"{method}_probed")
      with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        pretrain.pretrain(helpers.probed_config(method), str(runs[method]))
    return runs[method]

  return workdir_of


def pytest_collection_modifyitems(items):
  """Tests under tests/e2e/ (subprocesses, several processes, short demos) are marked `e2e`:
  `make test` leaves them out, `make test-e2e` and CI run them."""
  for item in items:
    if "e2e" in item.path.relative_to(item.config.rootpath).parts[:2]:
      item.add_marker(pytest.mark.e2e)
