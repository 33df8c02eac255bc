"""Times NT-Xent (forward and gradients) over embeddings sharded on every device.

    python benchmarks/nt_xent.py [--global_batch=4096] [--dim=128] [--steps=20]

`nt_xent.sharded_nt_xent` as the train step uses it: each device's anchors against all
gathered keys, gradients through the gather. After one untimed call, --steps calls are
dispatched back to back and waited for once. Prints one JSON line: the mean seconds per
call, anchors per second, XLA's FLOPs per device, the MFU against the chip's float32 peak
(the loss's matmul runs at HIGHEST precision; benchmarks/device_stats.py) and the device.
Imports no TensorFlow, TFDS or CLU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import PartitionSpec as P

from benchmarks import device_stats
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
  start = time.perf_counter()
  jax.block_until_ready([compiled(z1, z2) for _ in range(args.steps)])
  step_s = (time.perf_counter() - start) / args.steps
  flops = device_stats.flops(compiled)
  kind = jax.devices()[0].device_kind
  print(json.dumps({"what": "simclr_jax nt_xent forward+backward", "device_kind": kind,
                    "device_count": jax.device_count(), "global_batch": args.global_batch,
                    "dim": args.dim, "steps": args.steps, "step_s": step_s,
                    "compile_s": compile_s, "anchors_per_s": 2 * args.global_batch / step_s,
                    "flops_per_device": flops,
                    "mfu": device_stats.mfu(flops, step_s, kind, "float32")}), flush=True)


if __name__ == "__main__":
  main()
