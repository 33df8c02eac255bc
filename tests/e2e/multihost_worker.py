"""One process of the runs in tests/multihost_test.py (not a test module itself).

  python tests/e2e/multihost_worker.py MODE PORT PROCESS_ID DEVICES OUT [ARG]

PORT 'none': a single process, no jax.distributed. Otherwise process PROCESS_ID of 2 on
localhost:PORT (gloo collectives). DEVICES: simulated CPU devices in this process.

Modes (OUT: a folder, the run's workdir or where this process writes its results):
  pair       fixed-batch train steps, the state after each written to
             `state_<process>_<step>.npz` (step 0: the initial one) with the metrics in
             `steps_<process>.json`, then `pretrain.pretrain` of the tiny demo config in
             OUT/workdir (what it checkpoints copied to `saved_<process>_<step>.npz`) and
             `linear_eval.evaluate` there.
  reference  in one process, each of the same fixed-batch steps from the pair's state
             before it (ARG: the pair's OUT), the states after them written as the pair's
             (`state_0_0.npz`: this process's own initial state); then restores the newest
             checkpoint of ARG/workdir (`restored.npz`, `.json`).
  run        `runtime.run(config, OUT, 'pretrain')` of the tiny demo config with
             num_train_steps = ARG, as main.py runs it; SIMCLR_NO_DISTRIBUTED=1 in the
             environment, since the distributed set-up is done here.
"""

import json
import os
import sys
import time

START = time.perf_counter()

MODE, PORT, PROCESS_ID, DEVICES, OUT = sys.argv[1:6]
PROCESS_ID = int(PROCESS_ID)
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_platforms", "cpu")
if PORT != "none":
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{PORT}", 2, PROCESS_ID)

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import demo
from simclr_jax import runtime, sharding
from simclr_jax.data import input_pipeline
from simclr_jax.stages import linear_eval, pretrain
from simclr_jax.training import checkpoints, pretrain_step
from simclr_jax.training import model as model_lib
from simclr_jax.training import state as state_lib

# The fixed-batch steps: global batch, steps taken, steps the schedule spans, seed, and
# learning rate (unscaled). At the demo's 0.075 * sqrt(32) = 0.42 these random images make
# the steps chaotic: float32 reduction-order noise (2e-7 in the first step's gradient norm)
# grows to 6e-2 in the parameters after 3 steps, even between 1 process x 4 devices and
# 1 process x 2 devices. At 0.005 one step of the pair and of 1 x 4 from the same state
# agree within 1e-5 of the step's move, 2e-3 in the third (tests/multihost_test.py).
GLOBAL_BATCH, NUM_STEPS, SCHEDULE_STEPS, DATA_SEED, LEARNING_RATE = 32, 3, 10, 1234, 0.005
PRETRAIN_STEPS = 2  # Of the pair's `pretrain.pretrain` run.
NUM_CLASSES = 10  # The digits' (online probe).


def tiny_config(num_train_steps: int):
  config = demo.get_config()
  config.batch_size = GLOBAL_BATCH
  config.num_train_steps = num_train_steps
  config.log_every_steps = 1
  config.model.width_multiplier = 0.0625
  config.linear_eval.epochs = 2
  config.linear_eval.batch_size = 64
  config.linear_eval.few_shot_per_class = 0
  config.linear_eval.random_init_baseline = False
  return config


def leaf_name(path) -> str:
  return "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)


def flat_arrays(tree) -> dict[str, np.ndarray]:
  """'params/encoder/...' -> this process's copy of each leaf of a replicated tree; every
  local device's copy must be bitwise the same."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = leaf_name(path)
    if isinstance(leaf, jax.Array):
      copies = [np.asarray(shard.data) for shard in leaf.addressable_shards]
      for copy in copies[1:]:
        assert np.array_equal(copy, copies[0]), f"{name}: local replicas differ"
      flat[name] = copies[0]
    else:
      flat[name] = np.asarray(leaf)
  return flat


def load_state(template, path: str):
  """The state saved by `flat_arrays` at `path`, placed as `template`'s leaves are."""
  with np.load(path) as arrays:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    return jax.tree.unflatten(treedef, [jax.device_put(arrays[leaf_name(p)], leaf.sharding)
                                        for p, leaf in leaves])


def fixed_batches():
  """The same global batches in every process and run."""
  rng = np.random.default_rng(DATA_SEED)
  for _ in range(NUM_STEPS):
    views = rng.integers(0, 256, (GLOBAL_BATCH, 2, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, (GLOBAL_BATCH,), dtype=np.int32)
    yield {"views": views, "label": labels}


def fixed_batch_steps(out: str, pair_out: str | None = None) -> None:
  """NUM_STEPS train steps at a non-zero learning rate on `fixed_batches`; writes the
  state after each (`state_<process>_<step>.npz`, step 0 the initial) and the metrics.
  With `pair_out`, each step starts from the pair's state before it, so that the
  comparison measures one step's float32 rounding, not its growth over three."""
  config = tiny_config(SCHEDULE_STEPS)
  config.optimizer.warmup_epochs = 0.0
  config.optimizer.base_learning_rate = LEARNING_RATE
  config.optimizer.lr_scaling = "none"
  mesh = sharding.create_mesh()
  # Steps per epoch of the 1,347 training digits (only used by warm-up, here none).
  tx, schedule = state_lib.create_optimizer(config, 1347 // GLOBAL_BATCH, SCHEDULE_STEPS)
  graphdef = model_lib.model_graphdef(config, NUM_CLASSES)
  state = state_lib.init_train_state(config, tx, mesh, NUM_CLASSES)
  step_fn = pretrain_step.compile_train_step(config, graphdef, tx, schedule, mesh)

  def save(state, step):
    np.savez(os.path.join(out, f"state_{jax.process_index()}_{step}.npz"),
             **flat_arrays(state))

  batch_sharding = NamedSharding(mesh, P(sharding.DATA_AXIS))
  ranges = [index[0].indices(GLOBAL_BATCH)[:2] for index in
            batch_sharding.addressable_devices_indices_map((GLOBAL_BATCH,)).values()]
  lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
  assert hi - lo == GLOBAL_BATCH // jax.process_count(), ranges  # One contiguous block.
  metrics = []
  save(state, 0)
  with jax.set_mesh(mesh):
    for step, batch in enumerate(fixed_batches(), start=1):
      if pair_out is not None:
        state = load_state(state, os.path.join(pair_out, f"state_0_{step - 1}.npz"))
      local = {key: value[lo:hi] for key, value in batch.items()}
      state, step_metrics = step_fn(state, jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(batch_sharding, x), local))
      metrics.append({k: float(v) for k, v in jax.device_get(step_metrics).items()})
      save(state, step)
  info = {"rows": [lo, hi], "step": int(jax.device_get(state.step)), "metrics": metrics,
          "mesh_processes": [d.process_index for d in mesh.devices.flat],
          "mesh_device_ids": [d.id for d in mesh.devices.flat],
          "process_index": jax.process_index(), "process_count": jax.process_count(),
          "device_count": jax.device_count()}
  with open(os.path.join(out, f"steps_{jax.process_index()}.json"), "w") as f:
    json.dump(info, f)


def capture_saves(out: str) -> None:
  """Every checkpoint's `model` item, as this process holds it, also to saved_*.npz."""
  save = checkpoints.save

  def save_and_copy(manager, step, items, config):
    np.savez(os.path.join(out, f"saved_{jax.process_index()}_{step}.npz"),
             **flat_arrays(items["model"]))
    return save(manager, step, items, config)

  checkpoints.save = save_and_copy


def restore_pair_checkpoint(workdir: str, out: str) -> None:
  config = tiny_config(PRETRAIN_STEPS)
  mesh = sharding.create_mesh()
  num_probe_classes = model_lib.probe_classes(config, input_pipeline.create_source(config))
  with checkpoints.create_manager(checkpoints.checkpoint_dir(workdir),
                                  read_only=True) as manager:
    step, items = checkpoints.restore(
        manager, {"model": model_lib.init_model(config, mesh, num_probe_classes)}, config)
  np.savez(os.path.join(out, "restored.npz"), **flat_arrays(items["model"]))
  with open(os.path.join(out, "restored.json"), "w") as f:
    json.dump({"step": step, "device_count": jax.device_count(),
               "process_count": jax.process_count()}, f)


def phase(name: str) -> None:
  print(f"worker {PROCESS_ID}: {name} at {time.perf_counter() - START:.1f} s", flush=True)


def main():
  phase("started")
  logging.set_verbosity(logging.INFO)
  input_pipeline.configure_tensorflow()
  if MODE == "pair":
    fixed_batch_steps(OUT)
    phase("fixed-batch steps done")
    workdir = os.path.join(OUT, "workdir")
    config = tiny_config(PRETRAIN_STEPS)
    capture_saves(OUT)
    pretrain.pretrain(config, workdir)
    phase("pretrained")
    linear_eval.evaluate(config, workdir)
  elif MODE == "reference":
    fixed_batch_steps(OUT, sys.argv[6])
    phase("fixed-batch steps done")
    restore_pair_checkpoint(os.path.join(sys.argv[6], "workdir"), OUT)
  elif MODE == "run":
    config = tiny_config(int(sys.argv[6]))
    config.checkpoint_every_steps = 1000
    runtime.run(config, OUT, "pretrain")
  else:
    raise ValueError(f"unknown mode {MODE!r}")
  phase("done")


if __name__ == "__main__":
  main()
