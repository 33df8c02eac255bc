"""Times the jit-compiled pretraining step alone, on synthetic views already on the devices.

    python benchmarks/train_step.py --config=configs/food101_seed.py --batch_per_device=8 \
        [--image_size=224] [--steps=10] [--warmup=2] [--compute_dtypes=float32,bfloat16] \
        [--trace_dir=DIR --trace_steps=3] [--config.x=...]

For each compute dtype (default: the config's) it builds the project's state and step
(`train_state`, `pretrain_step`: the same code `main.py` trains with), compiles the step with
the state donated, runs --warmup steps, then dispatches --steps steps back to back and
blocks once at the end (as training runs them: no host round trip between steps), and
prints one JSON line:

  {"what": "simclr_jax train step", "config" (the file), "method", "compute_dtype",
   "conv_algorithm", "xla_flags" (the XLA_FLAGS it ran with), "device_kind",
   "device_count", "global_batch", "image_size", "steps", "views_per_s" (2 views per image,
   over the --steps steps), "step_s" (their mean), "compile_s",
   "flops_per_step_per_device" and "flops_per_view" (XLA's cost analysis of the compiled
   step), "achieved_flops_per_s" (per device), "peak_flops" and "mfu" (against the chip's
   peak dense FLOP/s for the compute dtype, benchmarks/device_stats.py; null for a chip not
   in its table), "mfu_vs_tf32" (float32 on a GPU: against the TF32 Tensor Core peak, which
   XLA may use for float32 convolutions), "peak_memory_bytes" (XLA's memory analysis:
   arguments + outputs + temporaries - aliased), "runtime_peak_bytes" (the allocator's peak,
   `memory_stats()`; null on the CPU), "loss_finite"; with --trace_dir, a profiler trace of
   --trace_steps more steps written there ("trace_files")}

Imports only jax, flax, optax, numpy and ml_collections (and absl, which they use): no
TensorFlow, TFDS or CLU, so it runs on an accelerator image that has none of them.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import device_stats
from simclr_jax import backbones, sharding
from simclr_jax.training import device_memory
from simclr_jax.training import model as model_lib
from simclr_jax.training import pretrain_step
from simclr_jax.training import state as state_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/food101_seed.py", "A config file.",
                                lock_config=True)
flags.DEFINE_integer("batch_per_device", 8, "Images per device (2 views each).")
flags.DEFINE_integer("image_size", 0, "View size; 0: the config's augment.image_size.")
flags.DEFINE_integer("steps", 10, "Timed steps, dispatched back to back, one block at the end.")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_list("compute_dtypes", [], "Cases to run; empty: the config's compute_dtype.")
flags.DEFINE_string("trace_dir", "", "If set, a profiler trace of --trace_steps more steps "
                    "(of the first dtype) is written here, gzipped, flat.")
flags.DEFINE_integer("trace_steps", 3, "Steps traced with --trace_dir.")


def measure(config, batch_per_device: int, image_size: int, steps: int, warmup: int,
            trace_dir: str = "", trace_steps: int = 3) -> dict:
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
  batch = {"views": jax.device_put(views, sharding.batch_sharded(mesh))}

  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  state, _, _ = device_stats.time_steps(compiled, state, batch, warmup)
  state, metrics, seconds = device_stats.time_steps(compiled, state, batch, steps)
  runtime_peak = device_stats.runtime_peak_bytes()  # Before the trace's steps.
  trace = {}
  if trace_dir:
    state, trace = device_stats.trace_steps(compiled, state, batch, trace_steps, trace_dir)

  step_s = seconds / steps
  flops = device_stats.flops(compiled)
  kind = jax.devices()[0].device_kind
  views_per_device = 2 * batch_per_device
  return {"what": "simclr_jax train step", "method": config.method,
          "backbone": backbones.describe(config.model),
          "compute_dtype": config.compute_dtype,
          "conv_algorithm": config.get("conv_algorithm", "xla"),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "device_kind": kind, "device_count": jax.device_count(),
          "global_batch": global_batch, "image_size": image_size, "steps": steps,
          "views_per_s": 2 * global_batch / step_s, "step_s": step_s, "compile_s": compile_s,
          "flops_per_step_per_device": flops,
          "flops_per_view": flops / views_per_device if flops else None,
          "achieved_flops_per_s": flops / step_s if flops else None,
          "peak_flops": device_stats.peak_flops(kind, config.compute_dtype),
          "mfu": device_stats.mfu(flops, step_s, kind, config.compute_dtype),
          **_tf32(flops, step_s, kind, config.compute_dtype),
          "peak_memory_bytes": device_memory.compiled_bytes(compiled)[0],
          "runtime_peak_bytes": runtime_peak,
          "loss_finite": bool(np.isfinite(float(metrics["loss"]))), **trace}


def _tf32(flops, step_s: float, kind: str, compute_dtype: str) -> dict:
  """float32 on a chip with TF32 Tensor Cores: MFU against them too (XLA's default precision
  may run float32 convolutions on them; an `mfu` over 1 says it did)."""
  if compute_dtype != "float32" or device_stats.peak_flops(kind, "tf32") is None:
    return {}
  return {"mfu_vs_tf32": device_stats.mfu(flops, step_s, kind, "tf32")}


def main(argv):
  del argv
  dtypes = FLAGS.compute_dtypes or [FLAGS.config.compute_dtype]
  for index, dtype in enumerate(dtypes):
    config = FLAGS.config.copy_and_resolve_references()
    config.compute_dtype = dtype
    size = FLAGS.image_size or config.augment.image_size
    result = measure(config, FLAGS.batch_per_device, size, FLAGS.steps, FLAGS.warmup,
                     FLAGS.trace_dir if index == 0 else "", FLAGS.trace_steps)
    print(json.dumps({"config": _config_file(), **result}), flush=True)


def _config_file() -> str:
  for arg in sys.argv:
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return "configs/food101_seed.py"


if __name__ == "__main__":
  app.run(main)
