"""Frozen-encoder features, shared by the stages that read a pretrained encoder (linear
evaluation, fine-tuning's evaluation, export): the jit-compiled encoder and one exact pass
over a split, every example once (padded batches with a mask), on every process."""

from __future__ import annotations

from typing import Any

import flax
import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from simclr_jax import encoder as encoder_lib
from simclr_jax.data import input_pipeline
from simclr_jax.sharding import batch_sharded, replicated
from simclr_jax.training import preemption, progress


@flax.struct.dataclass
class EncoderState:
  """A model's {'encoder', 'head', ...} params and statistics: a restored checkpoint's
  model item (a TrainState serves too)."""
  params: Any
  batch_stats: Any


def split_features(config, encode, encoder, mesh, source,
                   split: str) -> tuple[np.ndarray, np.ndarray]:
  """Frozen-encoder features of every example of `split`, on every process.

  `encode` comes from `make_encoder`; one serves every split and state of a model.
  `encoder` has the model's `params` and `batch_stats` (an EncoderState or a TrainState).

  Returns:
    features (num_examples, num_features) float32 and labels (num_examples,) int32.
  """
  data = batch_sharded(mesh)
  batch_size = config.linear_eval.batch_size
  ds = input_pipeline.eval_dataset(config, source, split, batch_size)
  host_batches = input_pipeline.padded_eval_batches(
      ds, input_pipeline.local_batch_size(batch_size))
  params = jax.device_put(encoder.params, replicated(mesh))
  batch_stats = jax.device_put(encoder.batch_stats, replicated(mesh))
  features, labels, count = [], [], 0
  expected = source.num_examples(split)
  with progress.Progress(expected, label=f"Encoding '{split}'", unit="image") as shown:
    for index, batch in enumerate(input_pipeline.global_batches(host_batches, data), 1):
      encoded = encode(params, batch_stats, batch["image"])
      encoded, label, mask = to_host((encoded, batch["label"], batch["mask"]))
      features.append(encoded[mask])
      labels.append(label[mask])
      count += len(labels[-1])
      shown.update(count)
      if index % 50 == 0:
        shown.report()
      if preemption.reached():
        raise preemption.Preempted(f"Encoding split '{split}'", index, None)
  features, labels = np.concatenate(features), np.concatenate(labels)
  if len(labels) != expected:
    raise RuntimeError(f"Encoded {len(labels)} examples of split '{split}' but it has "
                       f"{expected}: examples were lost or duplicated in the input pipeline.")
  return features.astype(np.float32), labels.astype(np.int32)


def make_encoder(graphdef: nnx.GraphDef, normalize: bool):
  """jit-compiled (params, batch_stats, (B, H, W, 3) uint8 images) -> (B, F) features of
  a model's encoder alone (projection head dropped), BatchNorm in inference mode;
  `normalize` as config.augment.normalize (encoder.jit_encode)."""
  return encoder_lib.jit_encode(graphdef, normalize, lambda model: model.encoder)


def to_host(arrays):
  """Global arrays -> full NumPy arrays on every process."""
  if jax.process_count() == 1:
    return jax.device_get(arrays)
  return multihost_utils.process_allgather(arrays, tiled=True)
