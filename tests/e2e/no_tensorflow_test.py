"""The state, the step and the train-step benchmark import no TensorFlow, TFDS or CLU: the
lent accelerator machines have none of them."""

import json
import os
import subprocess
import sys

from tests.support import paths, toy_backbone

ROOT = str(paths.REPO)

# Makes tensorflow, tensorflow_datasets and clu unimportable, then runs the given code.
BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "clu"):
      raise ImportError(f"{name} is blocked: this must run without it")
sys.meta_path.insert(0, Block())
"""

# Importing tensorflow, tensorflow_datasets or clu fails. Unlike BLOCKER, looking them up
# (importlib.util.find_spec, as etils.epath does for every path) still works, as on a machine
# without them, where it answers None.
FINDABLE_BLOCKER = """
import importlib.abc, importlib.machinery, sys
class Loader(importlib.abc.Loader):
  def create_module(self, spec):
    raise ImportError(f"{spec.name} is blocked: this must run without it")
  def exec_module(self, module):
    pass
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "clu"):
      return importlib.machinery.ModuleSpec(name, Loader())
sys.meta_path.insert(0, Block())
"""


def _run(code, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.run([sys.executable, "-c", BLOCKER + code, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def test_the_blocker_blocks():
  result = _run("import tensorflow")
  assert result.returncode != 0 and "blocked" in result.stderr


def test_state_step_and_benchmark_run_without_tensorflow():
  code = """
import runpy, sys
from simclr_jax import backbones, methods, precision
from simclr_jax.losses import byol, infonce, nt_xent, vicreg
from simclr_jax.methods import heads
from simclr_jax.training import checkpoints, optim, pretrain_step, state
sys.argv = ["train_step.py", "--config=configs/demo.py", "--config.model.width_multiplier=0.0625",
            "--batch_per_device=4", "--steps=2", "--warmup=1"]
runpy.run_path("benchmarks/train_step.py", run_name="__main__")
"""
  result = _run(code)
  assert result.returncode == 0, result.stderr[-3000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  assert line["device_count"] == 2 and line["global_batch"] == 8 and line["image_size"] == 16
  assert line["compute_dtype"] == "float32" and line["loss_finite"]
  assert line["views_per_s"] > 0 and line["flops_per_view"] > 0 and line["peak_memory_bytes"] > 0


def test_load_encoder_runs_without_tensorflow(pretrained_workdir):
  code = """
import json, sys
try:
  import tensorflow
  raise AssertionError("not blocked")
except ImportError:
  pass
import numpy as np
from simclr_jax import backbones, load_encoder
from tests.support import toy_backbone
backbones.BACKBONES["toy_mlp"] = toy_backbone  # The workdir's backbone, as helpers.py does.
encoder = load_encoder(sys.argv[1])
features = encoder(np.zeros((2, 16, 16, 3), np.uint8))
assert not {"tensorflow", "tensorflow_datasets", "clu"} & set(sys.modules)
print(json.dumps({"shape": list(features.shape), "step": encoder.step,
                  "devices": len(__import__("jax").devices())}))
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, XLA_FLAGS="")
  result = subprocess.run([sys.executable, "-c", FINDABLE_BLOCKER + code, str(pretrained_workdir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  assert line == {"shape": [2, toy_backbone.FEATURES], "step": 1, "devices": 1}
