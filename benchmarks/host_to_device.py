"""Times the host-to-device put of one global batch of uint8 view pairs, as pretraining puts it.

    python benchmarks/host_to_device.py [--batch_per_device=256] [--image_size=224] [--repeats=5]

A (global batch, 2, S, S, 3) uint8 NumPy array (the input pipeline's batch) made a global
array on the project's data sharding (`sharding.batch_sharded`) with
`jax.make_array_from_process_local_data`, the call `input_pipeline.global_batches` makes;
one untimed put, then --repeats puts, each waited for. Prints one JSON line:

  {"what": "host to device", "device_kind", "device_count", "global_batch", "image_size",
   "bytes", "put_s_median", "put_s_min", "bytes_per_s" (bytes / median), "views_per_s"
   (the views a second such puts could feed)}

Imports only jax and numpy: no TensorFlow (the input pipeline's module imports it).
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

from simclr_jax import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position


def measure(batch_per_device: int, image_size: int, repeats: int) -> dict:
  """The put's median and best time over `repeats`, and its rate; the JSON line's fields."""
  mesh = sharding.create_mesh()
  target = sharding.batch_sharded(mesh)
  global_batch = batch_per_device * jax.device_count()
  local_batch = global_batch // jax.process_count()
  views = np.random.default_rng(0).integers(
      0, 256, (local_batch, 2, image_size, image_size, 3), dtype=np.uint8)

  def put():
    start = time.perf_counter()
    jax.block_until_ready(jax.make_array_from_process_local_data(target, views))
    return time.perf_counter() - start

  put()  # The first put sets up the transfer (and, on a GPU, the staging buffers).
  times = [put() for _ in range(repeats)]
  median = statistics.median(times)
  return {"what": "host to device", "device_kind": jax.devices()[0].device_kind,
          "device_count": jax.device_count(), "global_batch": global_batch,
          "image_size": image_size, "bytes": int(views.nbytes), "put_s_median": median,
          "put_s_min": min(times), "bytes_per_s": views.nbytes / median,
          "views_per_s": 2 * local_batch / median}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_per_device", type=int, default=256)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(json.dumps(measure(args.batch_per_device, args.image_size, args.repeats)), flush=True)


if __name__ == "__main__":
  main()
