"""Parts of a split: the fine-tuning protocols' 1% and 10% of the labels (`labelled_subset`),
and the held-out part of a folder of class folders (`holdout_mask`).

The labelled part is stratified (every class keeps `fraction` of its examples, at least one)
and chosen from the seed alone, so every process, and every rerun, picks the same examples;
each process then reads its own share of them.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import tensorflow as tf
from absl import logging

from simclr_jax.data.sources import process_share


def key_hash(key: str) -> float:
  """A number in [0, 1) fixed by `key` alone (SHA-256): the same in every process, run and
  Python version (unlike hash(), which is salted per process)."""
  return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def holdout_mask(keys: list[str], labels: np.ndarray, fraction: float) -> np.ndarray:
  """(n,) bool, True for the held-out examples: about `fraction` of every class.

  Each key (a file's path relative to the dataset folder) is held out when its hash is
  below `fraction`, so the choice depends on that key alone: adding, removing or reordering
  other files moves no file from one side to the other. Then every class of two or more
  examples is given one held-out example (its lowest hash) if the hashes gave it none, and
  every class keeps one training example (its highest hash): only in those classes can a
  new file move another (it may take over the lowest or highest hash).
  """
  labels = np.asarray(labels)
  hashes = np.array([key_hash(key) for key in keys], np.float64)
  held = hashes < fraction
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    if len(members) >= 2 and not held[members].any():
      held[members[np.argmin(hashes[members])]] = True
    if held[members].all():
      held[members[np.argmax(hashes[members])]] = False
  return held


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of round(fraction * n_c) examples (at least one) of every class c of
  `labels` (n,), drawn reproducibly from `seed`."""
  if not 0 < fraction <= 1:
    raise ValueError(f"A label fraction must be in (0, 1], got {fraction}.")
  rng = np.random.default_rng(seed)
  chosen = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    count = max(1, int(round(fraction * len(members))))
    chosen.append(rng.permutation(members)[:count])
  return np.sort(np.concatenate(chosen))


@dataclasses.dataclass
class LabelledSubset:
  """`source` with its split `split` reduced to the examples at `indices` (positions in
  `source.full_dataset(split)`); other splits pass through. Follows the source protocol.

  Each process reads the whole split once, keeps its share of the chosen examples and holds
  them (encoded) in memory for the later epochs: the chosen part is small (10% of Food-101's
  training split is about 400 MB of JPEG).
  """
  source: object
  split: str
  indices: np.ndarray

  @property
  def num_classes(self) -> int:
    return self.source.num_classes

  @property
  def reads_files(self) -> bool:
    return getattr(self.source, "reads_files", False)

  def num_examples(self, split: str) -> int:
    return len(self.indices) if split == self.split else self.source.num_examples(split)

  def local_dataset(self, split: str, shuffle: bool, seed: int) -> tf.data.Dataset:
    if split != self.split:
      return self.source.local_dataset(split, shuffle, seed)
    ds = self._chosen(split, self.indices[process_share(len(self.indices))]).cache()
    if shuffle:
      ds = ds.shuffle(len(self.indices), seed=seed, reshuffle_each_iteration=True)
    return ds

  def full_dataset(self, split: str) -> tf.data.Dataset:
    if split != self.split:
      return self.source.full_dataset(split)
    return self._chosen(split, self.indices)

  def _chosen(self, split: str, indices: np.ndarray) -> tf.data.Dataset:
    """The examples of `source.full_dataset(split)` at `indices`, in the split's order."""
    keep = np.zeros(self.source.num_examples(split), bool)
    keep[indices] = True
    keep = tf.constant(keep)
    ds = self.source.full_dataset(split).enumerate()
    return ds.filter(lambda index, example: tf.gather(keep, index)).map(lambda i, e: e)

  def labels(self, split: str) -> np.ndarray:
    labels = self.source.labels(split)
    return labels[self.indices] if split == self.split else labels


def labelled_subset(source, split: str, fraction: float, seed: int):
  """`source` with `fraction` of `split`'s examples of every class (stratified_fraction),
  or `source` itself for fraction 1."""
  if fraction == 1:
    return source
  return LabelledSubset(source, split, stratified_fraction(source.labels(split), fraction,
                                                           seed))


def warn_if_batch_repeats(source, split: str, batch_size: int,
                          field: str = "finetune.batch_size") -> None:
  """Logs a warning when the global batch is larger than the labelled examples of `split`.

  A warning, not an error: such a run still trains on as many augmented views as
  epochs x batch (each batch repeats examples under other crops), and the shipped 1%
  protocol is one (808 Food-101 labels at batch 1024). But an epoch is then one step, so
  a tiny labelled set at a large batch takes few steps with near-copies in every batch.
  """
  count = source.num_examples(split)
  if batch_size > count:
    logging.warning(
        "%s=%d is larger than the %d labelled examples of %r: every batch repeats each "
        "about %.0f times (other crops) and an epoch is one step. A batch of at most %d "
        "takes more, distinct steps.", field, batch_size, count, split, batch_size / count,
        count)
