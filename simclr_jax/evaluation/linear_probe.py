"""The linear probe on frozen features: softmax regression with SGD (Nesterov's or not,
cosine decay), top-k accuracy, the few-shot subsets and the features' effective rank.

`probe` is what the linear evaluation stage reports for one encoder: linear top-1/top-5 and
kNN top-1 with all labels and, if asked, k labels per class. The classifier visits the
training features one shuffled epoch at a time (a step costs O(batch), not O(n):
docs/benchmarks.md, "Linear probe").
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simclr_jax.evaluation import knn


def peak_learning_rate(le_config) -> float:
  """The classifier's learning rate after its batch-size rule (`lr_scaling`): 'linear',
  learning_rate x batch_size / 256; 'none', learning_rate."""
  if le_config.lr_scaling == "linear":
    return le_config.learning_rate * le_config.batch_size / 256
  return le_config.learning_rate  # 'none' (check_config allows no other).


def train_linear_classifier(features: np.ndarray, labels: np.ndarray, num_classes: int,
                            epochs: int, le_config, seed: int,
                            weight_decay: float | None = None) -> dict[str, Any]:
  """Softmax regression on (n, F) features with SGD (+ Nesterov) momentum, cosine decay.

  Features are standardised with the training mean and std (stored in the result) when
  `le_config.standardize_features`. Every epoch visits the examples in a fresh random order,
  n // batch minibatches (the remainder is left to the next epoch's draw, as a loader that
  drops the last partial batch). `weight_decay` defaults to `le_config.weight_decay`.

  Returns:
    {'kernel': (F, C), 'bias': (C,), 'mean': (F,), 'std': (F,)}.
  """
  mean, std = _feature_stats(features, le_config.standardize_features)
  params = _fit_softmax_regression(
      jnp.asarray((features - mean) / std), jnp.asarray(labels), jax.random.PRNGKey(seed),
      num_classes=num_classes, epochs=epochs, batch=min(le_config.batch_size, len(labels)),
      learning_rate=peak_learning_rate(le_config), momentum=le_config.momentum,
      nesterov=le_config.nesterov,
      weight_decay=le_config.weight_decay if weight_decay is None else weight_decay)
  return {**jax.device_get(params), "mean": mean, "std": std}


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch",
                                             "learning_rate", "momentum", "nesterov",
                                             "weight_decay"))


def _fit_softmax_regression(x, y, key, *, num_classes, epochs, batch, learning_rate,
                            momentum, nesterov, weight_decay):
  """(n, F) features, (n,) labels -> {'kernel': (F, C), 'bias': (C,)}, one compiled scan
  over epochs, each a permutation of the n examples (O(n log n) once an epoch, so a step
  costs O(batch), whatever n is) and a scan over its minibatches."""
  n, dim = x.shape
  tx, _ = classifier_optimizer(learning_rate, momentum, nesterov, weight_decay,
                               epochs * (n // batch))

  def step(carry, index):
    params, opt_state = carry
    grads = jax.grad(softmax_loss)(params, x[index], y[index])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  def epoch(carry, key):
    return jax.lax.scan(step, carry, epoch_minibatches(key, n, batch))[0], None

  params = {"kernel": jnp.zeros((dim, num_classes)), "bias": jnp.zeros((num_classes,))}
  (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jax.random.split(key, epochs))
  return params


def epoch_minibatches(key, num_examples: int, batch: int) -> jax.Array:
  """(num_examples // batch, batch) indices: one epoch's minibatches, a random permutation
  of the examples without its last partial batch."""
  num_batches = num_examples // batch
  order = jax.random.permutation(key, num_examples)[:num_batches * batch]
  return order.reshape(num_batches, batch)


def classifier_optimizer(learning_rate: float, momentum: float, nesterov: bool,
                         weight_decay: float, num_steps: int):
  """(optimiser, its schedule): SGD with (Nesterov) momentum, cosine decay to 0, weight decay
  on the kernel only."""
  schedule = optax.cosine_decay_schedule(learning_rate, num_steps)
  tx = optax.chain(
      optax.add_decayed_weights(weight_decay, mask={"kernel": True, "bias": False}),
      optax.sgd(schedule, momentum=momentum, nesterov=nesterov))
  return tx, schedule


def softmax_loss(params, features, labels):
  logits = features @ params["kernel"] + params["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Minibatches of `train_linear_classifier` in one epoch over `num_examples`."""
  return max(1, num_examples // min(batch_size, num_examples))


def _feature_stats(features: np.ndarray, standardize: bool):
  if not standardize:
    return np.zeros(features.shape[1], np.float32), np.ones(features.shape[1], np.float32)
  return features.mean(0), features.std(0) + 1e-6


def top_k_accuracy(classifier: dict[str, Any], features: np.ndarray, labels: np.ndarray,
                   k: int) -> float:
  """Fraction of examples whose label is among the k highest logits."""
  logits = ((features - classifier["mean"]) / classifier["std"]) @ classifier["kernel"]
  logits = logits + classifier["bias"]
  top = np.argsort(-logits, axis=1)[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=1)))


def few_shot_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Indices of `per_class` examples of every class, chosen reproducibly."""
  rng = np.random.default_rng(seed)
  chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class]
            for c in np.unique(labels)]
  return np.sort(np.concatenate(chosen))


def feature_rank(features: np.ndarray) -> float:
  """The effective number of principal components of (N, F) features: exp of the entropy
  of their variance shares (Roy and Vetterli's effective rank of the covariance), between 1
  (all variance along one direction: a collapsed encoder, whatever its loss says) and F.

  Centred, unlike RankMe (Garrido et al., 2023): ReLU features share a large mean, which
  would count as a direction of its own and hide a collapse.
  """
  features = np.asarray(features, np.float64)
  centred = features - features.mean(axis=0)
  variances = np.linalg.svd(centred, compute_uv=False) ** 2
  shares = variances / max(variances.sum(), 1e-30)
  shares = shares[shares > 0]
  return float(np.exp(-np.sum(shares * np.log(shares))))


def probe(train_features, train_labels, eval_features, eval_labels, num_classes: int,
          le_config, seed: int, prefix: str = "", classifier=None) -> dict[str, float]:
  """Linear top-1/top-5 and kNN top-1, with all labels and, if asked, k labels per class.

  `classifier`, if given, is the all-labels linear classifier (trained on augmented images);
  otherwise it is fitted on the precomputed `train_features`.
  """
  updates = le_config.epochs * steps_per_epoch(len(train_labels), le_config.batch_size)

  def measure(features, labels, trial_seed, classifier=None, weight_decay=None):
    if classifier is None:  # As many updates as the all-labels probe, whatever len(labels).
      epochs = -(-updates // steps_per_epoch(len(labels), le_config.batch_size))
      classifier = train_linear_classifier(features, labels, num_classes, epochs, le_config,
                                           trial_seed, weight_decay)
    return {"top1": top_k_accuracy(classifier, eval_features, eval_labels, 1),
            "top5": top_k_accuracy(classifier, eval_features, eval_labels, 5),
            "knn_top1": knn.knn_accuracy(features, labels, eval_features, eval_labels,
                                         num_classes, le_config.knn_k,
                                         le_config.knn_temperature)}

  results = {prefix + name: value
             for name, value in measure(train_features, train_labels, seed, classifier).items()}
  shots = le_config.few_shot_per_class
  if shots > 0:
    # Averaged over several draws of the labelled examples: one draw of 5 per class is
    # noisy. As many updates as the all-labels probe, so the small set is fitted fully.
    trials = []
    for trial in range(le_config.few_shot_trials):
      subset = few_shot_subset(train_labels, shots, seed + trial)
      trials.append(measure(train_features[subset], train_labels[subset], seed + trial,
                            weight_decay=le_config.few_shot_weight_decay))
    for name in trials[0]:
      results[f"{prefix}{name}_{shots}shot"] = float(np.mean([t[name] for t in trials]))
  return results
