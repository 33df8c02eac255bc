"""Stops and kills of a real `main.py` run: the run ends where it was and resumes exactly.

SIGTERM or SIGINT mid-run: exit 0 with a checkpoint of the step reached. SIGKILL mid-run:
the rerun resumes from the newest readable checkpoint. Either way the final parameters
equal an uninterrupted run's bit for bit (default data options: deterministic order).
"""

import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import demo
from simclr_jax import sharding
from simclr_jax.training import checkpoints
from simclr_jax.training import model as model_lib
from tests.support import paths

# The module-scoped runs below serve every test here: one xdist worker takes them all
# (`make test-slow` distributes by group).
pytestmark = pytest.mark.xdist_group("preemption")

ROOT = str(paths.REPO)
NUM_STEPS = 120
CHECKPOINT_EVERY = 25
STEP_LINE = re.compile(r"\] \[(\d+)\] .*loss=")


def _config():
  config = demo.get_config()
  config.update(num_train_steps=NUM_STEPS, checkpoint_every_steps=CHECKPOINT_EVERY,
                log_every_steps=1, batch_size=32)
  config.model.width_multiplier = 0.0625
  return config


def _command(workdir):
  overrides = [f"--config.num_train_steps={NUM_STEPS}",
               f"--config.checkpoint_every_steps={CHECKPOINT_EVERY}",
               "--config.log_every_steps=1", "--config.batch_size=32",
               "--config.model.width_multiplier=0.0625"]
  return [sys.executable, "main.py", "--config=configs/demo.py", f"--workdir={workdir}",
          "--mode=pretrain", *overrides]


def _env():
  return dict(os.environ, SIMCLR_NO_DISTRIBUTED="1", JAX_PLATFORMS="cpu",
              TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS="--xla_force_host_platform_device_count=2")


def _run(workdir):
  result = subprocess.run(_command(workdir), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _run_and_signal(workdir, signum, after_step: int):
  """Starts the run, sends `signum` once step `after_step` is logged; (status, output)."""
  process = subprocess.Popen(_command(workdir), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in process.stdout:
    lines.append(line)
    match = STEP_LINE.search(line)
    if match and int(match.group(1)) >= after_step:
      process.send_signal(signum)
      break
  lines += process.stdout.read().splitlines(True)
  process.wait(timeout=600)
  return process.returncode, "".join(lines)


def _final_params(workdir):
  config = _config()
  mesh = sharding.create_mesh()
  target = model_lib.init_model(config, mesh, num_probe_classes=10)  # demo: online probe.
  with checkpoints.create_manager(checkpoints.checkpoint_dir(workdir), read_only=True) as m:
    step, items = checkpoints.restore(m, {"model": target}, config)
  return step, jax.device_get(items["model"])


def _assert_bitwise_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _run(workdir)
  step, params = _final_params(workdir)
  assert step == NUM_STEPS
  return params


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_the_step_reached_and_resumes_exactly(uninterrupted, tmp_path,
                                                                signum):
  status, output = _run_and_signal(tmp_path, signum, after_step=30)
  assert status == 0, output[-3000:]
  summary = json.loads((tmp_path / "pretrain_summary.json").read_text())
  stopped_at = summary["step"]
  assert summary["stopped_by_signal"] and 30 <= stopped_at < NUM_STEPS
  assert f"stopped by a signal after step {stopped_at}" in output
  assert "Resume with the same command" in output and "Traceback" not in output
  saved = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints"))
  # The step reached, beside the periodic ones (25 and any later multiple).
  assert saved[-1] == stopped_at and stopped_at % CHECKPOINT_EVERY != 0, saved

  resumed = _run(tmp_path)
  assert f"Resuming pretraining from step {stopped_at}" in resumed.stderr
  step, params = _final_params(tmp_path)
  assert step == NUM_STEPS
  _assert_bitwise_equal(params, uninterrupted)


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint_exactly(uninterrupted, tmp_path):
  status, output = _run_and_signal(tmp_path, signal.SIGKILL, after_step=60)
  assert status == -signal.SIGKILL, output[-2000:]
  saved = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
  assert saved and saved[-1] < NUM_STEPS and saved[-1] % CHECKPOINT_EVERY == 0, saved

  resumed = _run(tmp_path)
  assert "Resuming pretraining from step" in resumed.stderr
  step, params = _final_params(tmp_path)
  assert step == NUM_STEPS
  _assert_bitwise_equal(params, uninterrupted)
