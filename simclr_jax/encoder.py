"""The pretrained encoder as a library: `load_encoder(workdir)` -> a callable that maps
uint8 images to features, with nothing but the pretraining workdir.

    from simclr_jax import load_encoder
    encoder = load_encoder("/path/to/pretrain_workdir")    # newest readable checkpoint
    features = encoder(images)                              # (B, H, W, 3) uint8 -> (B, F)

The config comes from the checkpoint (its `config` item), the backbone is built alone and
only the `encoder` sub-tree of the checkpoint's `model` item is read: the method's heads
and the online probe play no part. Arrays land on this process's first device, whatever
the topology that saved them (a checkpoint of 8 devices loads on 1).

This module imports no TensorFlow, TFDS or CLU: it runs on a machine without them.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from simclr_jax import backbones, precision
from simclr_jax.training import checkpoints

MODEL_ITEM = "model"  # The checkpoint item holding {'params', 'batch_stats'} of the model.
ENCODER_KEY = "encoder"  # The backbone's sub-tree in it, for every method.


class Encoder:
  """A restored pretrained encoder: `encoder(images)` maps (B, H, W, 3) uint8 images
  (NumPy or jax) to (B, num_features) float32 features (a jax.Array), BatchNorm in
  inference mode, input as in pretraining (`config.augment.normalize`). Compiled once per
  input shape.

  Attributes:
    config: the pretraining run's config (an ml_collections.ConfigDict), from the checkpoint.
    step: the checkpoint's pretraining step.
    workdir: the pretraining workdir it was loaded from (as given).
    num_features: F.
    params: the encoder's parameters, a nested dict of arrays (kernels HWIO).
    batch_stats: its BatchNorm statistics ('mean', 'var'), a nested dict of arrays.
  """

  def __init__(self, config: ml_collections.ConfigDict, step: int, workdir: str,
               graphdef: nnx.GraphDef, params: Any, batch_stats: Any, num_features: int):
    self.config, self.step, self.workdir = config, step, workdir
    self.num_features = num_features
    self.params, self.batch_stats = params, batch_stats
    self._encode = jit_encode(graphdef, bool(config.augment.normalize))

  def __call__(self, images) -> jax.Array:
    """(B, H, W, 3) uint8 images -> (B, num_features) float32 features."""
    if not hasattr(images, "dtype"):
      images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"Expected (B, H, W, 3) uint8 images, got shape {images.shape} of "
                       f"{images.dtype}.")
    return self._encode(self.params, self.batch_stats, images)

  def __repr__(self) -> str:
    return (f"Encoder({backbones.describe(self.config.model)}, {self.num_features} "
            f"features, {self.config.method} step {self.step})")


def jit_encode(graphdef: nnx.GraphDef, normalize: bool,
               select: Callable[[Any], Any] = lambda module: module):
  """The one jitted encode: (params, batch_stats, (B, H, W, 3) uint8 images) -> (B, F)
  float32 features of `select(module)` (the backbone; a stage's model gives `.encoder`),
  BatchNorm in inference mode, input as in pretraining (`normalize`:
  config.augment.normalize)."""

  @jax.jit
  def encode(params, batch_stats, images):
    images = precision.to_model_input(images, normalize)
    return select(nnx.merge(graphdef, params, batch_stats))(images, train=False)

  return encode


def load_encoder(workdir, step: int | None = None) -> Encoder:
  """The encoder pretrained in `workdir` (local or gs://), from its newest readable
  checkpoint or the one at `step`; needs no config file.

  The checkpoint's own config names the backbone: only the encoder's params and
  batch_stats are read, onto this process's first device (the heads and the probe, whose
  size is unknown here, stay unread).

  Raises:
    checkpoints.NoCheckpointError: there is no checkpoint (at `step`).
    checkpoints.CheckpointError: checkpoints exist but none of those tried is readable.
  """
  step, items = checkpoints.restore_pretrained(workdir, _encoder_target, step=step,
                                               partial=True)
  config = ml_collections.ConfigDict(items[checkpoints.CONFIG_ITEM])
  graphdef, _, _, num_features = _abstract_encoder(config)
  model = items[MODEL_ITEM]
  logging.info("Loaded the %s encoder of %s at pretraining step %d.", config.method,
               workdir, step)
  return Encoder(config, step, str(workdir), graphdef, model["params"][ENCODER_KEY],
                 model["batch_stats"][ENCODER_KEY], num_features)


def _abstract_encoder(config):
  """(graphdef, params, batch_stats, num_features) of the backbone `config` names, built
  without allocating it."""
  abstract = nnx.eval_shape(lambda: backbones.create(config, nnx.Rngs(0)))
  graphdef, params, batch_stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  return graphdef, params, batch_stats, abstract.num_features


def _encoder_target(saved_config: dict[str, Any]) -> dict[str, Any]:
  """The checkpoint items to read, shaped by the step's saved config: the encoder's part
  of the model item, placed on this process's first device."""
  _, params, batch_stats, _ = _abstract_encoder(ml_collections.ConfigDict(saved_config))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return {MODEL_ITEM: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      {"params": {ENCODER_KEY: nnx.to_pure_dict(params)},
       "batch_stats": {ENCODER_KEY: nnx.to_pure_dict(batch_stats)}})}
