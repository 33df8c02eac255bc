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

from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from simclr_jax import backbones, checkpoints, precision, state

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
    normalize = bool(config.augment.normalize)

    @jax.jit
    def encode(params, batch_stats, images):
      images = precision.to_model_input(images, normalize)
      return nnx.merge(graphdef, params, batch_stats)(images, train=False)

    self._encode = encode

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


def load_encoder(workdir, step: int | None = None) -> Encoder:
  """The encoder pretrained in `workdir` (local or gs://), from its newest readable
  checkpoint or the one at `step`; needs no config file.

  Raises:
    state.NoCheckpointError: there is no checkpoint (at `step`).
    checkpoints.CheckpointError: checkpoints exist but none of those tried is readable.
  """
  directory = checkpoints.checkpoint_dir(workdir)
  steps = []
  if directory.exists():
    with checkpoints.create_manager(directory, read_only=True) as manager:
      steps = sorted(manager.all_steps(), reverse=True)
      candidates = steps if step is None else [s for s in steps if s == step]
      if candidates:
        return _restore_newest(manager, candidates, str(workdir))
  raise state.NoCheckpointError(
      f"No pretraining checkpoint{'' if step is None else f' at step {step}'} in "
      f"{directory} (it has steps {sorted(steps)}). Pretrain there first (python main.py "
      f"--config=... --workdir={workdir}), or pick another step.")


def _restore_newest(manager: ocp.CheckpointManager, candidates: list[int],
                    workdir: str) -> Encoder:
  """The encoder of the first readable step of `candidates` (newest first)."""
  failures = []
  for candidate in candidates:
    try:
      return _restore_step(manager, candidate, workdir)
    except Exception as e:  # pylint: disable=broad-except  Orbax raises many types.
      reason = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
      failures.append(f"step {candidate}: {reason}")
      logging.warning("Checkpoint step %d in %s is unreadable (%s)%s", candidate,
                      manager.directory, reason,
                      "; trying an older one." if candidate != candidates[-1] else ".")
  raise checkpoints.CheckpointError(
      f"No readable checkpoint in {manager.directory} ({'; '.join(failures)}).")


def _restore_step(manager: ocp.CheckpointManager, step: int, workdir: str) -> Encoder:
  """Reads the config at `step`, builds the backbone it names (abstractly) and restores
  only the encoder's params and batch_stats onto this process's first device."""
  saved = manager.restore(
      step, args=ocp.args.Composite(**{checkpoints.CONFIG_ITEM: ocp.args.JsonRestore()}))
  config = ml_collections.ConfigDict(saved[checkpoints.CONFIG_ITEM])
  abstract = nnx.eval_shape(lambda: backbones.create(config, nnx.Rngs(0)))
  graphdef, params, batch_stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      {"params": {ENCODER_KEY: nnx.to_pure_dict(params)},
       "batch_stats": {ENCODER_KEY: nnx.to_pure_dict(batch_stats)}})
  # partial_restore: the heads and the probe (whose size is unknown here) stay unread.
  model = ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True)
  restored = manager.restore(step, args=ocp.args.Composite(**{MODEL_ITEM: model}))[MODEL_ITEM]
  logging.info("Loaded the %s encoder of %s at pretraining step %d.", config.method,
               manager.directory, step)
  return Encoder(config, step, workdir, graphdef, restored["params"][ENCODER_KEY],
                 restored["batch_stats"][ENCODER_KEY], abstract.num_features)
