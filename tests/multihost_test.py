"""Two processes x 2 CPU devices on localhost (jax.distributed + gloo): the data is split
across processes, the loss is gathered across hosts, and evaluation counts every example
exactly once though each process holds a different share (slow: about 2 minutes)."""

import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{sys.argv[1]}", 2, int(sys.argv[2]))
from configs import demo
from simclr_jax import linear_eval, train
config = demo.get_config()
config.batch_size = 32
config.num_train_steps = 2
config.log_every_steps = 1
config.model.width_multiplier = 0.0625
config.linear_eval.epochs = 2
config.linear_eval.batch_size = 64
config.linear_eval.few_shot_per_class = 0
config.linear_eval.random_init_baseline = False
train.pretrain(config, sys.argv[3])
linear_eval.evaluate(config, sys.argv[3])
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_evaluate_exactly(tmp_path):
  port = str(_free_port())
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  workers = [subprocess.Popen([sys.executable, "-c", WORKER, port, str(i), str(tmp_path)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [w.communicate(timeout=600)[0] for w in workers]
  for worker, output in zip(workers, outputs):
    assert worker.returncode == 0, output[-3000:]

  pretrain = json.loads((tmp_path / "pretrain_summary.json").read_text())
  assert pretrain["processes"] == 2 and pretrain["devices"] == 4 and pretrain["step"] == 2
  results = json.loads((tmp_path / "linear_eval.json").read_text())
  # 450 test and 1,347 train digits, split 225/225 and 674/673 between the processes,
  # with batches of 32 per process: the padded tails are masked out, nothing is dropped.
  assert results["num_eval_examples"] == 450
  assert results["num_train_examples"] == 1347
