"""tf.data input: the source a config names, two-view pretraining batches, padded evaluation
batches.

Every source yields elements {'image', 'label': int32} for this process's share of a split
(disjoint across processes, covering the split); 'image' is a decoded (H, W, 3) uint8 image
or its encoded bytes, which the augmentations decode (JPEG fused with the random crop).
Batches are host-local NumPy arrays; `global_batches` makes them global jax.Arrays.
"""

from __future__ import annotations

import collections
import os
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
from absl import logging

from simclr_jax import config_checks
from simclr_jax.data import folder_sources, sources
from simclr_jax.data.augmentations import randomness, recipes


def configure_tensorflow() -> None:
  """Sets TensorFlow up as the data feeder it is here; call it before TensorFlow runs an op.

  - Off GPUs/TPUs, so that JAX owns their memory.
  - One intra-op thread, so every op runs on the tf.data thread that calls it.
    Why: the resize kernels and XLA-compiled functions otherwise split their work over
    TensorFlow's global intra-op pool, even with tf.data's `max_intra_op_parallelism=1`.
    For image-sized work the hand-offs cost more than they save: on 2 cores they took
    about a third of the pipeline's CPU time (thread-pool stealing and futex waits under
    `perf`), and removing them made the two-view pipeline about 1.4x faster
    (docs/benchmarks.md). tf.data's parallel calls are the parallelism.

  Once TensorFlow has run an op these can no longer change; then it leaves them as they are
  and warns if the pipeline is left on the slower threading.
  """
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):  # Already initialised, or no such device type.
      pass
  try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
  except RuntimeError:  # Already initialised (e.g. a second stage in the same process).
    if tf.config.threading.get_intra_op_parallelism_threads() != 1:
      logging.warning("TensorFlow ran an op before input_pipeline.configure_tensorflow(), so "
                      "its ops keep their intra-op thread pool and the input pipeline runs "
                      "slower (about 1.4x on 2 cores). Call it before using TensorFlow.")


def create_source(config, stage: str | None = None):
  """The data source that `config.dataset` names: 'digits' (scikit-learn's, offline),
  'folder' or 'food101_raw' (image files under config.data_dir), else a TFDS dataset.

  With `stage` ('pretrain', 'linear_eval' or 'finetune'), also checks that the data can
  serve that stage (`check_source`), so a problem is one line before anything is built.
  """
  if config.dataset == "digits":
    return _checked(sources.DigitsSource(), config, stage)
  if config.dataset in ("folder", "food101_raw") and not config.get("data_dir"):
    raise sources.DatasetNotFoundError(f"dataset={config.dataset!r} reads image files: set "
                                       f"--config.data_dir to their folder.")
  if config.dataset == "folder":
    source = folder_sources.FolderSource(config.data_dir, config.get("holdout_fraction", 0.0))
  elif config.dataset == "food101_raw":
    source = folder_sources.Food101RawSource(config.data_dir)
  else:
    source = sources.TfdsSource(config.dataset, config.get("data_dir"))
  return _checked(source, config, stage)


def _checked(source, config, stage: str | None):
  if stage is not None:
    check_source(config, source, stage)
  return source


def check_config(config) -> None:
  """ConfigError for data fields that cannot work (every stage calls it first)."""
  fraction = config.get("holdout_fraction", 0.0)
  config_checks.require(
      isinstance(fraction, (int, float)) and 0 <= fraction < 1,
      f"holdout_fraction must be in [0, 1) (0.1 holds out 10% of each class folder), got "
      f"{fraction!r}.")


def check_source(config, source, stage: str) -> None:
  """One-line errors, before anything is built, for data that cannot serve `stage`:

  - no labels (a flat folder) for linear_eval, finetune or pretraining's online probe;
  - config.train_split or config.eval_split naming a split the data lacks (for a folder:
    the split folders found, or the holdout_fraction that makes 'train' and 'test');
  - linear_eval.few_shot_per_class above the smallest class's training images (sources
    whose labels come from their file listing: counting TFDS's would read the split).

  Evaluating on the training split (eval_split == train_split, asked for explicitly) logs
  a warning: the scores are optimistic.
  """
  if (stage != "pretrain" or config.online_probe) and source.num_classes == 0:
    needs, fix = ((stage, "") if stage != "pretrain" else
                  ("config.online_probe=True", ", or set --config.online_probe=False"))
    reason = getattr(source, "unlabelled_reason", lambda: f"{config.dataset} has no classes")
    raise sources.DatasetNotFoundError(f"{needs} needs labels, but {reason()}{fix}.")
  for field in ("train_split", "eval_split"):
    if hasattr(source, "check_split"):
      source.check_split(config[field], field)
    else:
      sources.require_split(config[field], field, source.splits(), repr(config.dataset))
  if stage != "pretrain" and config.eval_split == config.train_split:
    logging.warning("Evaluating on the training images (config.eval_split=%r, the training "
                    "split): the scores are optimistic, not a measure on unseen images.",
                    config.eval_split)
  shots = config.linear_eval.few_shot_per_class
  if stage == "linear_eval" and shots > 0 and getattr(source, "reads_files", False):
    counts = np.bincount(source.labels(config.train_split), minlength=source.num_classes)
    smallest = int(np.argmin(counts))
    config_checks.require(
        shots <= counts[smallest],
        f"linear_eval.few_shot_per_class={shots} is more than the {counts[smallest]} "
        f"training images of class {source.classes[smallest]!r} (the smallest class of "
        f"{config.train_split!r}): set it to at most {counts[smallest]}, or 0 for no "
        f"few-shot probe.")


# --------------------------------------------------------------------------- pipelines


def data_threads(config) -> int:
  """tf.data's thread count: config.data_threads, else all cores when an accelerator does
  the compute, half of them when JAX computes on this same CPU (so it is not starved)."""
  if config.data_threads:
    return config.data_threads
  cores = os.cpu_count() or 1
  return max(1, cores // 2) if jax.default_backend() == "cpu" else cores


def _options(config) -> tf.data.Options:
  options = tf.data.Options()
  options.threading.private_threadpool_size = data_threads(config)
  options.threading.max_intra_op_parallelism = 1
  options.deterministic = bool(config.data_deterministic)
  return options


def local_batch_size(global_batch_size: int) -> int:
  return global_batch_size // jax.process_count()


def pretrain_dataset(config, source, start_step: int = 0) -> tf.data.Dataset:
  """Endless batches {'views': (local_batch, 2, S, S, 3) uint8} of augmented images, plus
  {'label': (local_batch,)} when `config.online_probe` (labels reach only that probe).
  views[:, 0] and views[:, 1] have the settings of config.augment.view1 and view2 (the
  shared fields where unset; BYOL's differ: configs/augment_presets.py).

  The shuffle order is fixed by `config.seed`; each element's augmentation seed is its
  position in the stream, so restarting at `start_step` resumes the same sequence.
  """
  batch = local_batch_size(config.batch_size)
  # Per-element seeds: (config.seed + process, position in stream).
  positions = tf.data.Dataset.counter()
  ds = tf.data.Dataset.zip(_endless_training_examples(config, source), positions)
  ds = ds.skip(start_step * batch)
  stream_id = config.seed * 1_000_003 + jax.process_index()

  def two_views(example, position):
    seed = tf.stack([tf.constant(stream_id, tf.int64), position])
    views = recipes.simclr_views(example["image"], randomness.split_seed(seed, 2),
                                       config.augment)
    if config.online_probe:
      return {"views": views, "label": example["label"]}
    return {"views": views}

  ds = _skip_undecodable(ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE), source)
  ds = ds.batch(batch, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(config))


def linear_train_dataset(config, source, start_step: int = 0) -> tf.data.Dataset:
  """Endless batches {'image': (b, S, S, 3) uint8, 'label': (b,)} of training images, randomly
  cropped and flipped (SimCLR's linear-evaluation augmentation), b = per-process share of
  config.linear_eval.batch_size; from batch `start_step` on, as `pretrain_dataset`."""
  return crop_flip_dataset(config, source, config.linear_eval.batch_size, start_step,
                           stream=1)


def crop_flip_dataset(config, source, batch_size: int, start_step: int = 0,
                      stream: int = 1) -> tf.data.Dataset:
  """Endless batches {'image': (b, S, S, 3) uint8, 'label': (b,)} of `config.train_split`,
  randomly cropped (config.augment's crop ranges and image size) and flipped, b = this
  process's share of the global `batch_size`, from batch `start_step` on. `stream` (1:
  linear evaluation, 2: fine-tuning) keeps each stage's random draws apart from the
  others' and from pretraining's."""
  batch = local_batch_size(batch_size)
  ds = tf.data.Dataset.zip(_endless_training_examples(config, source),
                           tf.data.Dataset.counter())
  ds = ds.skip(start_step * batch)
  # Negative: apart from pretraining's ids; the streams 2**40 apart.
  stream_id = -(config.seed * 1_000_003 + jax.process_index()) - 1 - (stream - 1) * 2**40

  def crop_and_flip(example, position):
    seed = tf.stack([tf.constant(stream_id, tf.int64), position])
    return {"image": recipes.crop_flip_view(example["image"], seed, config.augment),
            "label": example["label"]}

  ds = _skip_undecodable(ds.map(crop_and_flip, num_parallel_calls=tf.data.AUTOTUNE), source)
  ds = ds.batch(batch, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(config))


def _endless_training_examples(config, source) -> tf.data.Dataset:
  """This process's training examples, epoch after epoch, shuffled with `config.seed`.

  With `config.cache_encoded_images` the encoded images (JPEG bytes for TFDS and folder
  sources: food101's train split is about 4 GB) stay in host memory after the first epoch.
  The cache replays the order it was filled in, so later epochs are shuffled whole from it
  (the buffer holds references to the cached bytes, not copies); the first epoch streams
  through the usual buffer and is the same as without the cache.
  """
  ds = source.local_dataset(config.train_split, shuffle=True, seed=config.seed)
  if not config.cache_encoded_images:
    return ds.shuffle(config.shuffle_buffer, seed=config.seed,
                      reshuffle_each_iteration=True).repeat()
  cached = ds.cache()
  everything = max(int(cached.cardinality()), config.shuffle_buffer)  # Unknown: -2.
  first_epoch = cached.shuffle(config.shuffle_buffer, seed=config.seed)
  later_epochs = cached.shuffle(everything, seed=config.seed + 1,
                                reshuffle_each_iteration=True).repeat()
  return first_epoch.concatenate(later_epochs)


def _skip_undecodable(ds: tf.data.Dataset, source) -> tf.data.Dataset:
  """A file can pass the listing checks (header, end marker) and still be corrupt inside:
  in training, each such file is logged with its error and skipped. Evaluation does not
  skip: its exact count check reports the loss."""
  if getattr(source, "reads_files", False):
    return ds.ignore_errors(log_warning=True)
  return ds


def eval_dataset(config, source, split: str, batch_size: int) -> tf.data.Dataset:
  """One pass over this process's share of `split`, deterministic preprocessing.

  Yields {'image': (b, S, S, 3) uint8, 'label': (b,), 'mask': (b,)} with b = batch_size //
  process_count; the last batch is padded with mask == False so nothing is dropped.
  """
  batch = local_batch_size(batch_size)
  ds = source.local_dataset(split, shuffle=False, seed=config.seed)

  def preprocess(example):
    return {"image": recipes.eval_view(example["image"], config.augment),
            "label": example["label"], "mask": True}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch)
  ds = ds.map(lambda b: _pad_batch(b, batch))
  options = _options(config)
  options.deterministic = True
  return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _pad_batch(batch, size: int):
  count = tf.shape(batch["mask"])[0]

  def pad(x):
    paddings = [[0, size - count]] + [[0, 0]] * (len(x.shape) - 1)
    return tf.pad(x, paddings)

  return {key: pad(value) for key, value in batch.items()}


def padded_eval_batches(ds: tf.data.Dataset,
                        local_batch: int) -> Iterator[dict[str, np.ndarray]]:
  """Host batches of `eval_dataset`, continued with all-masked batches until every
  process has run out, so that all processes run the same number of steps."""
  empty = {key: np.zeros((local_batch, *spec.shape[1:]), spec.dtype.as_numpy_dtype)
           for key, spec in ds.element_spec.items()}
  iterator = ds.as_numpy_iterator()
  while True:
    batch = next(iterator, None)
    if not _any_process_has_data(batch is not None):
      return
    yield empty if batch is None else batch


def _any_process_has_data(local_has_data: bool) -> bool:
  if jax.process_count() == 1:
    return local_has_data
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.array(local_has_data))
  return bool(np.any(flags))


def global_batches(host_batches, sharding, prefetch: int = 2):
  """Host-local NumPy batches -> global jax.Arrays on `sharding`, `prefetch` ahead.

  Each process contributes its local rows (`jax.make_array_from_process_local_data`);
  the transfer of the next batches overlaps with the current step.
  """
  queue = collections.deque()

  def put(batch):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)

  for batch in host_batches:
    queue.append(put(batch))
    if len(queue) > prefetch:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
