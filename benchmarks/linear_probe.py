"""Times the linear evaluation stage on synthetic precomputed features, 10k to 1M examples.

    python benchmarks/linear_probe.py [--sizes=10000,100000,1000000] [--dim=64]

The stage's work after feature extraction (`linear_probe.probe` with configs/default.py's
linear_eval block: 90 epochs, batch 1024, kNN k=200): the linear classifier and the kNN, each
compile included as a user waits for them, then the whole probe again once compiled. One JSON line a
size, so the growth with the training set is seen: the classifier costs O(epochs x n), the kNN
O(n_eval x n). Imports no TensorFlow, TFDS or CLU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.evaluation import knn, linear_probe  # pylint: disable=g-import-not-at-top,wrong-import-position


def synthetic_features(num_examples: int, dim: int, num_classes: int, seed: int):
  """(n, dim) float32 features around one centre a class, (n,) int32 labels."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim)).astype(np.float32)
  labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
  noise = rng.normal(size=(num_examples, dim)).astype(np.float32)
  return centres[labels] + 1.5 * noise, labels


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="10000,100000,1000000")
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--classes", type=int, default=101)
  parser.add_argument("--eval_examples", type=int, default=1000)
  parser.add_argument("--epochs", type=int, default=None, help="Default: the config's (90).")
  args = parser.parse_args()

  le_config = default.get_config().linear_eval
  le_config.few_shot_per_class = 0
  if args.epochs is not None:
    le_config.epochs = args.epochs
  for size in (int(s) for s in args.sizes.split(",")):
    features, labels = synthetic_features(size + args.eval_examples, args.dim, args.classes, 0)
    train_x, train_y = features[:size], labels[:size]
    eval_x, eval_y = features[size:], labels[size:]
    start = time.perf_counter()
    linear_probe.train_linear_classifier(train_x, train_y, args.classes,
                                         le_config.epochs, le_config, seed=0)
    classifier_s = time.perf_counter() - start
    start = time.perf_counter()
    knn.knn_accuracy(train_x, train_y, eval_x, eval_y, args.classes, le_config.knn_k,
                     le_config.knn_temperature)
    knn_s = time.perf_counter() - start
    start = time.perf_counter()
    results = linear_probe.probe(train_x, train_y, eval_x, eval_y, args.classes, le_config, 0)
    probe_s = time.perf_counter() - start  # Compiled already: the two parts' running time.
    steps = le_config.epochs * linear_probe.steps_per_epoch(size, le_config.batch_size)
    print(json.dumps({
        "what": "simclr_jax linear_eval probe on precomputed features",
        "device_kind": jax.devices()[0].device_kind, "train_examples": size,
        "eval_examples": args.eval_examples, "dim": args.dim, "classes": args.classes,
        "epochs": le_config.epochs, "batch": le_config.batch_size, "classifier_steps": steps,
        "classifier_s": round(classifier_s, 2),
        "classifier_ms_per_step": round(1000 * classifier_s / steps, 3),
        "knn_s": round(knn_s, 2), "probe_s_compiled": round(probe_s, 2),
        "top1": round(results["top1"], 3), "knn_top1": round(results["knn_top1"], 3)}),
          flush=True)


if __name__ == "__main__":
  main()
