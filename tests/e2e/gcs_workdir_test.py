"""`--workdir=gs://bucket/run` end to end, offline, on a fake GCS (tests/fake_gcs.py).

What lands in the bucket is read back from the fake's own storage, not through the code
under test: Orbax checkpoints (tensorstore's gcs driver), the JSON summaries, tsne.png and
the TensorBoard event files (TensorFlow's gfile through the TLS proxy).
"""

import json
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from ml_collections import config_dict

from simclr_jax import storage
from simclr_jax.training import checkpoints
from tests.support import paths

# pylint: disable=redefined-outer-name  (fake_gcs, a fixture of tests/fake_gcs.py: conftest.py)

REPO = str(paths.REPO)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Left behind by an unfinished write: storage's temp-then-rename, Orbax's uncommitted
# step folders, the writability probe.
LEFTOVERS = re.compile(r"\.tmp-|\.orbax-checkpoint-tmp|\.simclr_write_probe_")
TINY = ["--config.checkpoint_every_steps=2", "--config.log_every_steps=2",
        "--config.batch_size=32", "--config.model.width_multiplier=0.0625",
        "--config.linear_eval.epochs=1", "--config.linear_eval.batch_size=64",
        "--config.linear_eval.few_shot_per_class=0",
        "--config.linear_eval.random_init_baseline=False",
        "--config.linear_eval.tsne_points=100"]
RUN_TIMEOUT_S = 900


def test_fake_gcs_serves_storage_and_orbax(fake_gcs):
  """The storage layer (epath -> tf.io.gfile -> proxy) and the checkpoints module (Orbax
  -> tensorstore, google-cloud-storage) on the fake, in this process."""
  root = f"{fake_gcs.bucket_url}/quick"
  config = config_dict.ConfigDict({"model": {"depth": 18}, "seed": 0})
  tree = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.float32(-1.5)}
  with fake_gcs.environ():
    storage.ensure_writable_dir(root)
    storage.write_json(f"{root}/summary.json", {"step": 3, "loss": 0.25})
    read_back = storage.read_json(f"{root}/summary.json")
    with checkpoints.create_manager(checkpoints.checkpoint_dir(root)) as manager:
      checkpoints.save(manager, 7, {"model": tree}, config)
      manager.wait_until_finished()
    with checkpoints.create_manager(checkpoints.checkpoint_dir(root),
                                    read_only=True) as manager:  # A fresh manager.
      step, restored = checkpoints.restore(manager, {"model": tree}, config)

  assert read_back == {"step": 3, "loss": 0.25}
  assert json.loads(fake_gcs.read("quick/summary.json")) == {"step": 3, "loss": 0.25}
  assert step == 7
  np.testing.assert_array_equal(restored["model"]["w"], tree["w"])
  assert float(restored["model"]["b"]) == -1.5
  names = fake_gcs.names("quick/")
  for item in ("model", "config"):
    assert any(n.startswith(f"quick/checkpoints/7/{item}/") for n in names), names
  assert json.loads(fake_gcs.read("quick/checkpoints/7/config/metadata"))["seed"] == 0
  assert not [n for n in names if LEFTOVERS.search(n)], names
  assert fake_gcs.proxy.tunnels > 0  # TensorFlow's gfile went through the proxy ...
  assert not fake_gcs.proxy.errors, fake_gcs.proxy.errors  # ... to the fake only.


def _main(cwd, env, workdir, mode, steps):
  """main.py in a subprocess, from an empty folder, with the fake's variables."""
  command = [sys.executable, os.path.join(REPO, "main.py"),
             f"--config={os.path.join(REPO, 'configs', 'demo.py')}",
             f"--workdir={workdir}", f"--mode={mode}", f"--config.num_train_steps={steps}",
             *TINY]
  environment = {**os.environ, **env, "PYTHONPATH": REPO, "SIMCLR_NO_DISTRIBUTED": "1",
                 "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
                 "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=False)
  output = (result.stdout + result.stderr)[-6000:]
  assert result.returncode == 0, f"{' '.join(command[1:4])} {mode} failed:\n{output}"
  return output


def _steps(names, root):
  """The checkpoint steps stored under root/checkpoints."""
  matches = (re.match(rf"{root}/checkpoints/(\d+)/", n) for n in names)
  return sorted({int(m.group(1)) for m in matches if m})


def _event_tags(fake, names, folder, tmp_path):
  """{tag: steps} from the TensorBoard event files directly in `folder` of the bucket."""
  tags = {}
  files = [n for n in names
           if n.startswith(folder + "/events.out.tfevents.") and "/" not in n[len(folder) + 1:]]
  assert files, f"no TensorBoard event file in {folder}/: {names}"
  for k, name in enumerate(files):
    local = tmp_path / f"events_{k}"
    local.write_bytes(fake.read(name))
    for event in tf.compat.v1.train.summary_iterator(str(local)):
      for value in event.summary.value:
        tags.setdefault(value.tag, set()).add(event.step)
  return tags


@pytest.mark.slow
def test_pretrain_and_eval_with_gcs_workdir(fake_gcs, tmp_path):
  """main.py --workdir=gs://... : pretraining and linear evaluation write everything to the
  bucket and nothing to the current directory; a rerun resumes from the bucket."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  local = tmp_path / "local"
  local.mkdir()
  workdir = f"{fake_gcs.bucket_url}/run"

  _main(cwd, fake_gcs.env, workdir, "pretrain_and_eval", steps=4)
  assert not list(cwd.iterdir()), f"written to the current directory: {list(cwd.iterdir())}"
  names = fake_gcs.names("run/")
  assert _steps(names, "run") == [2, 4], names
  for step in (2, 4):
    for item in ("model", "train", "config"):
      assert any(n.startswith(f"run/checkpoints/{step}/{item}/") for n in names), (step, item)
    assert f"run/checkpoints/{step}/_CHECKPOINT_METADATA" in names
  saved_config = json.loads(fake_gcs.read("run/checkpoints/4/config/metadata"))
  assert saved_config["num_train_steps"] == 4
  summary = json.loads(fake_gcs.read("run/pretrain_summary.json"))
  assert (summary["step"], summary["resumed_from_step"]) == (4, 0), summary
  assert np.isfinite(summary["loss"]), summary
  evaluation = json.loads(fake_gcs.read("run/linear_eval.json"))
  assert evaluation["checkpoint_step"] == 4, evaluation
  assert evaluation["num_eval_examples"] > 0, evaluation
  png = fake_gcs.read("run/tsne.png")
  assert png.startswith(PNG_SIGNATURE) and len(png) > 1000
  pretrain_tags = _event_tags(fake_gcs, names, "run", local)
  assert {2, 4} <= pretrain_tags.get("loss", set()), pretrain_tags
  assert "augmented_view_pairs" in pretrain_tags, pretrain_tags
  eval_tags = _event_tags(fake_gcs, names, "run/linear_eval", local)
  assert 4 in eval_tags.get("tsne", set()), eval_tags
  assert not [n for n in names if LEFTOVERS.search(n)], names

  _main(cwd, fake_gcs.env, workdir, "pretrain", steps=6)
  assert not list(cwd.iterdir()), f"written to the current directory: {list(cwd.iterdir())}"
  names = fake_gcs.names("run/")
  assert _steps(names, "run") == [2, 4, 6], names  # max_checkpoints_to_keep is 3.
  summary = json.loads(fake_gcs.read("run/pretrain_summary.json"))
  assert (summary["step"], summary["resumed_from_step"]) == (6, 4), summary
  assert 6 in _event_tags(fake_gcs, names, "run", local).get("loss", set())
  assert not [n for n in names if LEFTOVERS.search(n)], names
  assert not fake_gcs.proxy.errors, fake_gcs.proxy.errors
