"""A short pretrain_and_eval run as a user starts it on a CPU machine: its stderr holds the
run's own lines and none of the libraries' noise."""

import os
import subprocess
import sys

from tests.support import paths

NOISE = (
    "InitializeLog",  # absl's notice, printed by TensorFlow's native libraries on import
    "oneDNN", "cpu_feature_guard",  # TensorFlow's start-up INFO lines
    "Unable to initialize backend", "libtpu",  # JAX looking for a TPU
    "Given directory is read only",  # Orbax, on every stage that reads a checkpoint
    "[Hyperparameters]", "Got images",  # clu's dumps (TensorBoard has them)
    "| encoder/", "Total: ",  # the parameter table (WORKDIR/parameters.txt has it)
    "Setting work unit notes",  # clu's once-a-minute progress
    "Single-process run",
)


def test_a_short_run_shows_no_library_noise(tmp_path):
  env = {name: value for name, value in os.environ.items()
         if name not in ("TF_CPP_MIN_LOG_LEVEL", "JAX_PLATFORMS", "XLA_FLAGS")}
  result = subprocess.run(
      [sys.executable, "main.py", "--config=configs/demo.py", f"--workdir={tmp_path}",
       "--mode=pretrain_and_eval", "--config.num_train_steps=2", "--config.log_every_steps=1",
       "--config.model.width_multiplier=0.0625", "--config.batch_size=64",
       "--config.linear_eval.epochs=1", "--config.linear_eval.random_init_baseline=False",
       "--config.linear_eval.tsne_points=0", "--config.linear_eval.few_shot_per_class=0"],
      cwd=str(paths.REPO), env=env, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [pattern for pattern in NOISE if pattern in result.stderr] == [], result.stderr
  assert "Pretraining: step 2/2 (100%), " in result.stderr
  assert "Linear probe on 450 evaluation examples" in result.stdout
  assert (tmp_path / "parameters.txt").read_text().startswith("+---")
