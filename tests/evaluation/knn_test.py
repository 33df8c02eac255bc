"""Weighted kNN against a direct NumPy implementation."""

import numpy as np

from simclr_jax.evaluation import knn
from tests.support.knn_numpy import numpy_knn


def test_knn_matches_numpy_reference_across_chunks():
  rng = np.random.default_rng(0)
  train_x = rng.normal(size=(300, 16)).astype(np.float32)
  train_y = rng.integers(0, 7, 300)
  eval_x = rng.normal(size=(53, 16)).astype(np.float32)
  for k, temperature in [(1, 0.07), (10, 0.07), (200, 0.5)]:
    expected = numpy_knn(train_x, train_y, eval_x, 7, k, temperature)
    got = knn.knn_predict(train_x, train_y, eval_x, 7, k, temperature, chunk=16)
    np.testing.assert_array_equal(got, expected)


def test_knn_accuracy_on_clustered_data_and_k_larger_than_the_train_set():
  rng = np.random.default_rng(1)
  centers = rng.normal(size=(4, 8)) * 5
  train_y, eval_y = rng.integers(0, 4, 40), rng.integers(0, 4, 30)
  train_x = centers[train_y] + rng.normal(size=(40, 8))
  eval_x = centers[eval_y] + rng.normal(size=(30, 8))
  assert knn.knn_accuracy(train_x, train_y, eval_x, eval_y, 4, k=5) == 1.0
  # k = 200 > 40 training examples: clipped to all of them, still a valid prediction.
  assert knn.knn_predict(train_x, train_y, eval_x, 4, k=200).shape == (30,)
