"""A labelled part of a training split: the fine-tuning protocols' 1% and 10% of the labels.

The part is stratified (every class keeps `fraction` of its examples, at least one) and
chosen from the seed alone, so every process, and every rerun, picks the same examples; each
process then reads its own share of them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from simclr_jax.data.sources import process_share


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
