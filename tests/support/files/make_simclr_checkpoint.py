"""Makes tests/support/files/simclr_checkpoint_<commit>.tar.gz: a tiny SimCLR pretraining run's
checkpoints (2 steps on mock Food-101, tests.support.helpers.tiny_method_config), written by the code
of the checkout it runs in. The committed one was made at f193c55, the last commit before the
modules moved into folders (2026-12-03), so that tests/checkpoints_test.py shows a checkpoint
of the old layout restoring and resuming in the new one.

    git worktree add /tmp/old f193c55 && cd /tmp/old && \
        python /path/to/tests/support/files/make_simclr_checkpoint.py /tmp/out.tar.gz
"""
import os
import sys
import tarfile
import tempfile

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["SIMCLR_NO_DISTRIBUTED"] = "1"
sys.path.insert(0, os.getcwd())

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from tests.support.helpers import tiny_method_config  # pylint: disable=g-import-not-at-top,wrong-import-position

try:  # The layout before the move, then the one after.
  from simclr_jax import pretrain  # pylint: disable=g-import-not-at-top
except ImportError:
  from simclr_jax.stages import pretrain  # pylint: disable=g-import-not-at-top

if __name__ == "__main__":
  with tempfile.TemporaryDirectory() as workdir:
    config = tiny_method_config("simclr", num_train_steps=2, checkpoint_every_steps=2)
    with tfds.testing.mock_data(num_examples=21):
      pretrain.pretrain(config, workdir)
    with tarfile.open(sys.argv[1], "w:gz") as tar:
      tar.add(os.path.join(workdir, "checkpoints"), arcname="checkpoints")
