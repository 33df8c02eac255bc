"""Weighted kNN (Wu et al., 2018) written directly in NumPy, one query at a time, for tests:
the reference of simclr_jax/evaluation/knn.py (tests/evaluation/knn_test.py) and of the
stages' kNN accuracy (tests/stages/vit_stages_test.py)."""

import numpy as np


def numpy_knn(train_x, train_y, eval_x, num_classes, k, temperature):
  """(q,) predicted labels of (q, F) `eval_x` from (n, F) `train_x` and (n,) `train_y`: the
  k most cosine-similar training examples each vote exp(similarity / temperature)."""
  train_x = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  eval_x = eval_x / np.linalg.norm(eval_x, axis=1, keepdims=True)
  predictions = []
  for query in eval_x:
    similarity = train_x @ query
    neighbours = np.argsort(-similarity)[:k]
    scores = np.zeros(num_classes)
    for j in neighbours:
      scores[train_y[j]] += np.exp(similarity[j] / temperature)
    predictions.append(np.argmax(scores))
  return np.array(predictions)
