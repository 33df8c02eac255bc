"""Throughput of the two-view pretraining pipeline on JPEG files, and of plain JPEG decode.

    python benchmarks/make_jpegs.py /tmp/bench_jpegs          # 400 photo-like JPEGs, <=512 px
    python benchmarks/input_pipeline.py --dir /tmp/bench_jpegs [--sizes 224,256] [--batch 64]
        [--batches 20] [--warmup 3] [--threads 0] [--decode-images 2000] [--no-decode-limit]
        [--no-antialias] [--breakdown] [--deterministic | --nondeterministic]

For each image size it builds the project's pretraining input exactly as training does
(`input_pipeline.pretrain_dataset` with configs/food101_seed.py: the seed's augmentations,
blur on every view, antialiased resize; dataset 'folder', data_dir --dir; batch --batch;
data_threads --threads, 0 = every core this process may use), runs --warmup batches, times
--batches batches as NumPy arrays (uint8 views) and prints one JSON line:

  {"what": "simclr_jax two-view pipeline", "variant", "size", "threads", "cores",
   "deterministic", "images_per_s", "views_per_s", "fraction_of_decode_limit", ...}

--deterministic / --nondeterministic set `config.data_deterministic` (tf.data's
`Options.deterministic`: elements in their exact order, as exact resumption needs, or in
whatever order the parallel map finishes them); without either flag the config's own value
is used. The JSON line's `deterministic` gives the value timed.

--no-antialias adds the same with `augment.resize_antialias=False` (plain bilinear, as
big_vision). --breakdown adds runs with parts of the augmentation switched off (no blur, no
colour jitter, crop + flip only), to show where the time goes.

The JPEG-decode limit (printed first, one JSON line): every file's bytes are read into
memory once, then `tf.io.decode_jpeg` (full image, RGB) runs in a tf.data map with the same
thread count and options as the pipeline; images/s. The pipeline's `fraction_of_decode_limit`
is its images/s divided by that: how close the whole two-view augmentation comes to doing
nothing but decoding each image once. The pipeline itself decodes each image once, fused
with the crop: only the bounding window of its two views' crop windows
(`augmentations.cropping.decode_for_crops`). The line also gives the rate of that decode alone
(`bounding_crop_decode_images_per_s`, the pipeline's own decode cost) and, for comparison,
of one crop-decode per view (`two_crop_decodes_images_per_s`).

TensorFlow does all the work; JAX is imported by the package but kept on the CPU and idle.
Compare against the seed's pipeline run back to back on the same files and cores:

    python ../shared/reference/seed_torch.py pipeline /tmp/bench_jpegs --size 256 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # The pipeline module imports JAX; keep it idle.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import food101_seed  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.data.augmentations import cropping, randomness  # pylint: disable=g-import-not-at-top,wrong-import-position


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


# Config overrides of each variant (on top of configs/food101_seed.py).
VARIANTS = {
    "seed config": {},
    "no antialiasing": {"resize_antialias": False},
    "no blur": {"blur_probability": 0.0},
    "no colour jitter": {"color_jitter_probability": 0.0},
    "crop + flip only": {"blur_probability": 0.0, "color_jitter_probability": 0.0,
                         "grayscale_probability": 0.0},
}


def seed_config(data_dir: str, size: int, batch: int, threads: int, augment_overrides=None,
                deterministic: bool | None = None):
  config = food101_seed.get_config()
  if deterministic is not None:
    config.data_deterministic = deterministic
  config.augment.image_size = size
  config.augment.update(augment_overrides or {})
  config.dataset = "folder"  # Image files under data_dir (input_pipeline.create_source).
  config.data_dir = data_dir
  config.batch_size = batch
  config.data_threads = threads
  return config


def _options(threads: int) -> tf.data.Options:
  """The pipeline's own tf.data options (input_pipeline._options) for a given thread count."""
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  options.deterministic = False
  return options


def time_pipeline(data_dir: str, size: int, batch: int, batches: int, warmup: int,
                  threads: int, variant: str = "seed config",
                  deterministic: bool | None = None) -> dict:
  config = seed_config(data_dir, size, batch, threads, VARIANTS[variant], deterministic)
  source = input_pipeline.create_source(config)
  ds = input_pipeline.pretrain_dataset(config, source)
  iterator = ds.as_numpy_iterator()
  for _ in range(warmup):  # Starts the threads, fills the shuffle buffer, traces the map.
    first = next(iterator)
  views_shape = list(first["views"].shape)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = time.perf_counter() - start
  images = batches * batch
  return {"what": "simclr_jax two-view pipeline", "variant": variant, "size": size,
          "threads": threads,
          "cores": os.cpu_count(), "deterministic": bool(config.data_deterministic),
          "images_per_s": round(images / seconds, 2),
          "views_per_s": round(2 * images / seconds, 2), "batch": batch, "batches": batches,
          "views_shape": views_shape, "files": source.num_examples("train"),
          "seconds": round(seconds, 2)}


def _file_bytes(data_dir: str) -> list[bytes]:
  paths = sorted(os.path.join(folder, name) for folder, _, names in os.walk(data_dir)
                 for name in names if name.lower().endswith((".jpg", ".jpeg")))
  contents = []
  for path in paths:
    with open(path, "rb") as f:
      contents.append(f.read())
  return contents


def _images_per_s(ds: tf.data.Dataset, images: int, chunk: int = 64) -> float:
  """Times `images` elements of `ds` (elements are small), after one warm-up chunk."""
  iterator = ds.batch(chunk).as_numpy_iterator()
  next(iterator)
  chunks = max(1, images // chunk)
  start = time.perf_counter()
  for _ in range(chunks):
    next(iterator)
  return chunks * chunk / (time.perf_counter() - start)


def decode_limits(data_dir: str, threads: int, images: int) -> dict:
  """Images/s, bytes in memory, for: a full decode_jpeg of each file; one crop-decode of
  the bounding window of two random crop windows (the pipeline's own decoding,
  `augmentations.cropping.decode_for_crops`); one crop-decode per window instead."""
  contents = _file_bytes(data_dir)
  encoded = tf.data.Dataset.from_tensor_slices(tf.constant(contents, tf.string)).repeat()

  def full_decode(image_bytes):
    return tf.shape(tf.io.decode_jpeg(image_bytes, channels=3))  # Small output: no copy cost.

  full = encoded.map(full_decode, num_parallel_calls=threads).with_options(_options(threads))
  full_rate = _images_per_s(full, images)

  aug = food101_seed.get_config().augment  # Crop windows do not depend on image_size.
  indexed = tf.data.Dataset.zip(encoded, tf.data.Dataset.counter())

  def seeds_at(position):  # Two views' seeds, as the pipeline splits them.
    return randomness.split_seed(tf.stack([tf.constant(0, tf.int64), position]), 2)

  def two_crop_decodes(image_bytes, position):
    shape = tf.image.extract_jpeg_shape(image_bytes)
    windows = cropping.crop_windows(seeds_at(position), shape[0], shape[1],
                                         aug.crop_area_range, aug.crop_ratio_range)
    return tf.stack([tf.shape(tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3))
                     for window in tf.unstack(windows, num=2)])

  def bounding_crop_decode(image_bytes, position):
    region, _ = cropping.decode_for_crops(image_bytes, seeds_at(position),
                                               aug.crop_area_range, aug.crop_ratio_range)
    return tf.shape(region)

  def rate(decode):
    return _images_per_s(indexed.map(decode, num_parallel_calls=threads).with_options(
        _options(threads)), images)

  sizes = [len(c) for c in contents]
  return {"what": "JPEG decode limit", "threads": threads, "cores": os.cpu_count(),
          "files": len(contents), "mean_file_kb": round(float(np.mean(sizes)) / 1024, 1),
          "images_per_s": round(full_rate, 2),
          "bounding_crop_decode_images_per_s": round(rate(bounding_crop_decode), 2),
          "two_crop_decodes_images_per_s": round(rate(two_crop_decodes), 2),
          "images_timed": images}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dir", required=True, help="Class folders of JPEGs (make_jpegs.py).")
  parser.add_argument("--sizes", default="224,256", help="Comma-separated image sizes.")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--batches", type=int, default=20, help="Batches timed per size.")
  parser.add_argument("--warmup", type=int, default=3, help="Batches run before timing.")
  parser.add_argument("--threads", type=int, default=0,
                      help="tf.data threads; 0 = every core this process may use.")
  parser.add_argument("--decode-images", type=int, default=2000,
                      help="Images decoded to time the JPEG-decode limit.")
  parser.add_argument("--no-decode-limit", action="store_true",
                      help="Skip the JPEG-decode limit.")
  parser.add_argument("--no-antialias", action="store_true",
                      help="Also time augment.resize_antialias=False.")
  parser.add_argument("--breakdown", action="store_true",
                      help="Also time the pipeline with parts of the augmentation off.")
  order = parser.add_mutually_exclusive_group()
  order.add_argument("--deterministic", dest="deterministic", action="store_true",
                     default=None, help="config.data_deterministic=True (exact order).")
  order.add_argument("--nondeterministic", dest="deterministic", action="store_false",
                     help="config.data_deterministic=False (any order).")
  args = parser.parse_args()

  input_pipeline.configure_tensorflow()
  threads = args.threads or usable_cores()
  sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
  limit = None
  if not args.no_decode_limit:
    limit = decode_limits(args.dir, threads, args.decode_images)
    print(json.dumps(limit), flush=True)
  variants = ["seed config"]
  if args.no_antialias:
    variants.append("no antialiasing")
  if args.breakdown:
    variants += ["no blur", "no colour jitter", "crop + flip only"]
  for size in sizes:
    for variant in variants:
      result = time_pipeline(args.dir, size, args.batch, args.batches, args.warmup, threads,
                             variant, args.deterministic)
      if limit:
        result["decode_limit_images_per_s"] = limit["images_per_s"]
        result["fraction_of_decode_limit"] = round(
            result["images_per_s"] / limit["images_per_s"], 3)
        result["fraction_of_its_decode"] = round(
            result["images_per_s"] / limit["bounding_crop_decode_images_per_s"], 3)
      print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
