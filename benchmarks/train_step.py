"""Times the jit-compiled pretraining step alone, on synthetic views already on the devices.

    python benchmarks/train_step.py --config=configs/food101_seed.py --batch_per_device=8 \
        [--image_size=224] [--steps=10] [--warmup=2] [--compute_dtypes=float32,bfloat16] \
        [--config.x=...]

For each compute dtype (default: the config's) it builds the project's state and step
(`train_state`, `pretrain_step`: the same code `main.py` trains with), compiles the step with
the state donated, runs --warmup steps, then times --steps steps one by one (each waits for
its result) and prints one JSON line:

  {"what": "simclr_jax train step", "config" (the file), "compute_dtype", "conv_algorithm",
   "xla_flags" (the XLA_FLAGS it ran with), "device_kind",
   "device_count", "global_batch", "image_size", "views_per_s" (median over the timed
   steps; 2 views per image), "step_s_median", "step_s_min", "compile_s", "flops_per_view"
   (XLA's cost analysis of the compiled step), "achieved_flops_per_s", "peak_memory_bytes"
   (compiled memory analysis: arguments + outputs + temporaries - aliased)}

Imports only jax, flax, optax, numpy and ml_collections (and absl, which they use): no
TensorFlow, TFDS or CLU, so it runs on an accelerator image that has none of them.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from simclr_jax import sharding
from simclr_jax.training import model as model_lib
from simclr_jax.training import pretrain_step  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.training import state as state_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/food101_seed.py", "A config file.",
                                lock_config=True)
flags.DEFINE_integer("batch_per_device", 8, "Images per device (2 views each).")
flags.DEFINE_integer("image_size", 0, "View size; 0: the config's augment.image_size.")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_list("compute_dtypes", [], "Cases to run; empty: the config's compute_dtype.")


def measure(config, batch_per_device: int, image_size: int, steps: int,
            warmup: int) -> dict:
  """One case: the config's step at this batch, size and dtype; the JSON line's fields."""
  mesh = sharding.create_mesh()
  global_batch = batch_per_device * jax.device_count()
  config.batch_size = global_batch
  tx, schedule = state_lib.create_optimizer(config, steps_per_epoch=1000,
                                              num_train_steps=100_000)
  state = state_lib.init_train_state(config, tx, mesh)
  step = pretrain_step.compile_train_step(config, model_lib.model_graphdef(config), tx,
                                          schedule, mesh, num_train_steps=100_000)
  views = np.random.default_rng(0).integers(
      0, 256, (global_batch, 2, image_size, image_size, 3), dtype=np.uint8)
  batch = {"views": jax.device_put(views, NamedSharding(mesh, P(sharding.DATA_AXIS)))}

  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)

  median = statistics.median(times)
  flops = _flops(compiled)
  views_per_step = 2 * global_batch
  return {"what": "simclr_jax train step", "method": config.method,
          "compute_dtype": config.compute_dtype,
          "conv_algorithm": config.get("conv_algorithm", "xla"),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
          "global_batch": global_batch, "image_size": image_size,
          "views_per_s": views_per_step / median, "step_s_median": median,
          "step_s_min": min(times), "compile_s": compile_s,
          "flops_per_view": flops / views_per_step if flops else None,
          "achieved_flops_per_s": flops / median if flops else None,
          "peak_memory_bytes": _peak_memory(compiled),
          "loss_finite": bool(np.isfinite(float(metrics["loss"])))}


def _flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per computation.
    analysis = analysis[0] if analysis else None
  return float(analysis["flops"]) if analysis and "flops" in analysis else None


def _peak_memory(compiled) -> int | None:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  peak = getattr(stats, "peak_memory_in_bytes", None)
  if peak:
    return int(peak)
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def main(argv):
  del argv
  dtypes = FLAGS.compute_dtypes or [FLAGS.config.compute_dtype]
  for dtype in dtypes:
    config = FLAGS.config.copy_and_resolve_references()
    config.compute_dtype = dtype
    size = FLAGS.image_size or config.augment.image_size
    result = measure(config, FLAGS.batch_per_device, size, FLAGS.steps, FLAGS.warmup)
    print(json.dumps({"config": _config_file(), **result}), flush=True)


def _config_file() -> str:
  for arg in sys.argv:
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return "configs/food101_seed.py"


if __name__ == "__main__":
  app.run(main)
