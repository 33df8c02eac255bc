"""Weighted k-nearest-neighbour classification on frozen features (Wu et al., 2018).

Features are L2-normalised; each evaluation example takes its k most cosine-similar
training examples and every neighbour votes for its class with weight exp(sim / T).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax.losses import normalize


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def _class_scores(queries, keys, key_labels, *, num_classes: int, k: int, temperature):
  """(q, F) queries, (n, F) keys -> (q, num_classes) summed neighbour weights."""
  similarity = normalize.l2_normalize(queries) @ normalize.l2_normalize(keys).T  # (q, n)
  top_similarity, top_index = jax.lax.top_k(similarity, k)                # (q, k)
  weights = jnp.exp(top_similarity / temperature)
  votes = jax.nn.one_hot(key_labels[top_index], num_classes) * weights[..., None]
  return votes.sum(axis=1)


def knn_predict(train_features: np.ndarray, train_labels: np.ndarray,
                eval_features: np.ndarray, num_classes: int, k: int = 200,
                temperature: float = 0.07, chunk: int = 1024) -> np.ndarray:
  """Predicted class (n_eval,) for every evaluation example, `chunk` queries at a time so
  that the (chunk, n_train) similarity matrix bounds the memory."""
  k = min(k, len(train_labels))
  keys, key_labels = jnp.asarray(train_features), jnp.asarray(train_labels)
  predictions = []
  for start in range(0, len(eval_features), chunk):
    scores = _class_scores(jnp.asarray(eval_features[start:start + chunk]), keys, key_labels,
                           num_classes=num_classes, k=k, temperature=temperature)
    predictions.append(np.asarray(jnp.argmax(scores, axis=-1)))
  return np.concatenate(predictions)


def knn_accuracy(train_features, train_labels, eval_features, eval_labels, num_classes: int,
                 k: int = 200, temperature: float = 0.07) -> float:
  """Top-1 accuracy of `knn_predict` on the evaluation labels."""
  predictions = knn_predict(train_features, train_labels, eval_features, num_classes, k,
                            temperature)
  return float(np.mean(predictions == eval_labels))
