"""Times NT-Xent (forward and gradients) over embeddings sharded on every device.

    python benchmarks/nt_xent.py [--global_batch=4096] [--dim=128] [--steps=20]

`nt_xent.sharded_nt_xent` as the train step uses it: each device's anchors against all
gathered keys, gradients through the gather. Prints one JSON line: the median seconds per
call, pairs per second, XLA's FLOPs and the device. Imports no TensorFlow, TFDS or CLU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import PartitionSpec as P

from simclr_jax import sharding
from simclr_jax.losses import nt_xent


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--global_batch", type=int, default=4096)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--temperature", type=float, default=0.1)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()

  mesh = sharding.create_mesh()
  batch_sharding = NamedSharding(mesh, P(sharding.DATA_AXIS))
  rng = np.random.default_rng(0)
  z1, z2 = (jax.device_put(rng.normal(size=(args.global_batch, args.dim)).astype(np.float32),
                           batch_sharding) for _ in range(2))

  def loss(a, b):
    return nt_xent.sharded_nt_xent(a, b, args.temperature, mesh, sharding.DATA_AXIS)[0]

  start = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(z1, z2).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(z1, z2))
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(z1, z2))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  print(json.dumps({"what": "simclr_jax nt_xent forward+backward",
                    "device_kind": jax.devices()[0].device_kind,
                    "device_count": jax.device_count(), "global_batch": args.global_batch,
                    "dim": args.dim, "step_s_median": median, "compile_s": compile_s,
                    "anchors_per_s": 2 * args.global_batch / median,
                    "flops": float(analysis["flops"]) if analysis else None}), flush=True)


if __name__ == "__main__":
  main()
