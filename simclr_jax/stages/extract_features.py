"""The feature extraction stage (`--mode=extract_features`): the frozen encoder's features
of whole splits, every example once (deterministic preprocessing, BatchNorm in inference
mode), as NumPy arrays:

  workdir/features/<split>_features.npy  (n, F) float32
  workdir/features/<split>_labels.npy    (n,) int32
  workdir/features/features.json         splits, counts, checkpoint step

It reads the pretraining checkpoint in `config.export.pretrain_workdir` (default: the
workdir) at `config.export.checkpoint_step` (default: the newest readable one). Only
process 0 writes; every path goes through `storage` (local or gs://).
"""

from __future__ import annotations

import io
import re
from typing import Any

import jax
import numpy as np
from absl import logging

from simclr_jax import config_checks, config_text, sharding, storage
from simclr_jax.data import input_pipeline
from simclr_jax.evaluation import encoding
from simclr_jax.training import model as model_lib
from simclr_jax.training import summaries

FEATURES_DIR = "features"


def feature_splits(config) -> tuple[str, ...]:
  """config.export.feature_splits, or (train_split, eval_split) when empty."""
  splits = tuple(config.export.feature_splits) or (config.train_split, config.eval_split)
  return tuple(dict.fromkeys(splits))  # Each once, in order.


def file_stem(split: str) -> str:
  """A split name as a file name: 'train[:10%]' -> 'train_10'."""
  return re.sub(r"[^A-Za-z0-9.-]+", "_", split).strip("_.") or "split"


def _check_splits(splits: tuple[str, ...]) -> None:
  stems = [file_stem(split) for split in splits]
  config_checks.require(len(set(stems)) == len(stems),
                        f"export.feature_splits {list(splits)} would share file names "
                        f"{stems}: give splits that differ in their letters or digits.")


def _write_npy(target, array: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.save(buffer, array)
  storage.write_bytes(target, buffer.getvalue())


def extract_features(config, workdir: str) -> dict[str, Any]:
  """Runs the feature extraction stage: for each split of `feature_splits(config)`, the
  pretrained encoder's features of every example (deterministic preprocessing, BatchNorm
  in inference mode) to workdir/features; returns and writes features/features.json."""
  splits = feature_splits(config)
  _check_splits(splits)
  config_checks.check_batch_size("linear_eval.batch_size", config.linear_eval.batch_size)
  config = model_lib.config_from_checkpoint(
      config, config.export.pretrain_workdir or workdir, config.export.checkpoint_step)
  model_lib.check_model_config(config)
  config_text.write(config, workdir, "extract_features")
  input_pipeline.configure_tensorflow()
  mesh = sharding.create_mesh()
  source = input_pipeline.create_source(config)
  num_probe_classes = model_lib.probe_classes(config, source)
  encode = encoding.make_encoder(model_lib.model_graphdef(config, num_probe_classes),
                                 config.augment.normalize)
  pretrain_workdir = config.export.pretrain_workdir or workdir
  step, model = model_lib.restore_model(config, pretrain_workdir, mesh, num_probe_classes,
                                    config.export.checkpoint_step)
  encoder = encoding.EncoderState(**model)
  folder = storage.path(workdir) / FEATURES_DIR
  written = {}
  for split in splits:
    features, labels = encoding.split_features(config, encode, encoder, mesh, source, split)
    paths = {kind: folder / f"{file_stem(split)}_{kind}.npy" for kind in ("features", "labels")}
    if jax.process_index() == 0:
      _write_npy(paths["features"], features)
      _write_npy(paths["labels"], labels)
    logging.info("Features of split '%s': %s, written to %s.", split, features.shape,
                 paths["features"])
    written[split] = {"num_examples": int(len(labels)), "features": str(paths["features"]),
                      "labels": str(paths["labels"])}
  summary = {"method": config.method, "checkpoint_step": step,
             "num_features": int(features.shape[1]), "splits": written,
             "pretrain_workdir": str(pretrain_workdir)}
  summaries.write_json(workdir, f"{FEATURES_DIR}/features.json", summary)
  if jax.process_index() == 0:
    print(f"Wrote the features of {', '.join(splits)} (pretraining step {step}) to {folder}.",
          flush=True)
  return summary
