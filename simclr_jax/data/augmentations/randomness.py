"""Stateless random draws: every random choice of the augmentations comes from an explicit
(2,) seed tensor, so an element's views depend only on (config.seed, its position)."""

from __future__ import annotations

import tensorflow as tf


def split_seed(seed, num: int) -> tf.Tensor:
  """(2,) seed -> (num, 2) independent seeds."""
  return tf.random.experimental.stateless_split(seed, num)


def uniform(seed, minval, maxval, shape=()):
  return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


def coin(seed, probability: float) -> tf.Tensor:
  return uniform(seed, 0.0, 1.0) < probability
