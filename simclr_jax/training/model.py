"""The model of `config.method`, shared by every stage: its config check and the fields a
checkpoint must share, built (backbone, heads, online probe) or only traced, initialised
from `config.seed`, or restored from a pretraining checkpoint's `model` item (whose config
gives a later stage its model's fields).

It imports no TensorFlow, TFDS or CLU (a test checks).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from simclr_jax import backbones, methods, precision
from simclr_jax.methods import base
from simclr_jax.sharding import replicated
from simclr_jax.training import checkpoints


def check_model_config(config) -> None:
  """ConfigError for a backbone or method block that cannot work."""
  precision.check_compute_dtype(config)
  backbones.check_config(config)
  methods.check_config(config)


def model_fields(config) -> tuple[str, ...]:
  """Config fields (dotted prefixes) that shape the model, or its input: a checkpoint
  restores only into a config that agrees on them (an encoder pretrained on raw [0, 1]
  pixels fed normalised ones would give wrong features without a word)."""
  return ("method", *backbones.model_fields(config.model), "online_probe",
          "augment.normalize", *methods.get(config).model_fields)


def config_from_checkpoint(config, pretrain_workdir, step: int | None = None):
  """`config` with the model that `pretrain_workdir`'s checkpoint (at `step`, default the
  newest) was pretrained with: its `model_fields` (the backbone, the method and its heads,
  the online probe, the input normalisation) and its image size taken from the checkpoint's
  config, one log line naming those that differed. A later stage never repeats a
  pretraining override. (The image size shapes no parameter, but features at another size
  than pretraining's are another encoder's: fine-tuning changes it by finetune.image_size.)

  Raises:
    NoCheckpointError: there is none (at `step`).
  """
  step, saved = checkpoints.read_config(pretrain_workdir, step)
  saved_fields = (*model_fields(ml_collections.ConfigDict(saved)), "augment.image_size")
  adopted, differing = checkpoints.adopt_fields(config, saved, saved_fields)
  if differing:
    logging.info("Model from the checkpoint (%s, step %d): %s.", pretrain_workdir, step,
                 ", ".join(f"{name}={saved_value!r} (config: {value!r})"
                           for name, saved_value, value in differing))
  return adopted


def probe_classes(config, source) -> int:
  """Classes of the online probe: the source's when `config.online_probe`, else 0 (none)."""
  return source.num_classes if config.online_probe else 0


def build_model(config, rngs: nnx.Rngs, num_probe_classes: int = 0) -> base.Model:
  """The model of `config.method` (backbone, heads, online probe)."""
  return methods.get(config).build(config, rngs, num_probe_classes)


def model_graphdef(config, num_probe_classes: int = 0) -> nnx.GraphDef:
  """The model's static structure, built without allocating parameters."""
  abstract = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0), num_probe_classes))
  return nnx.split(abstract, nnx.Param, nnx.BatchStat)[0]


def init_variables(config, num_probe_classes: int) -> tuple[Any, Any]:
  model = build_model(config, nnx.Rngs(config.seed), num_probe_classes)
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)


def init_model(config, mesh: Mesh, num_probe_classes: int = 0) -> dict[str, Any]:
  """{'params', 'batch_stats'} initialised from `config.seed`, replicated over the mesh:
  the checkpoint's `model` item, which later stages restore into."""

  def init():
    params, batch_stats = init_variables(config, num_probe_classes)
    return {"params": params, "batch_stats": batch_stats}

  return jax.jit(init, out_shardings=replicated(mesh))()


def abstract_model(config, mesh: Mesh, num_probe_classes: int = 0) -> dict[str, Any]:
  """`init_model`'s structure, shapes, dtypes and shardings as ShapeDtypeStructs, traced
  but neither compiled nor run: a restore target costs no compile."""
  sharding = replicated(mesh)
  shapes = jax.eval_shape(lambda: dict(zip(("params", "batch_stats"),
                                           init_variables(config, num_probe_classes))))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      shapes)


def restore_model(config, pretrain_workdir: str, mesh: Mesh, num_probe_classes: int = 0,
                  step: int | None = None,
                  modules: tuple[str, ...] | None = None) -> tuple[int, dict[str, Any]]:
  """(step, {'params', 'batch_stats'}) of the pretrained model in `pretrain_workdir`'s
  checkpoints (its newest readable step, or `step`), replicated over the mesh; with
  `modules` (e.g. ('encoder',)) only those top-level modules, read alone (then the online
  probe's size does not matter).

  Only the checkpoint's `model` item is read: the optimiser that pretrained it, its state
  and any target network play no part, so a checkpoint of any pretraining run evaluates
  or fine-tunes under any protocol, as long as the model fields agree (`model_fields`).

  Raises:
    NoCheckpointError: there is none (at `step`).
  """
  target = abstract_model(config, mesh, num_probe_classes)
  if modules is not None:
    target = {kind: {name: tree[name] for name in modules if name in tree}
              for kind, tree in target.items()}
  restored = checkpoints.restore_pretrained(pretrain_workdir, {"model": target}, config, step,
                                            check_fields=model_fields(config),
                                            partial=modules is not None)
  return restored[0], restored[1]["model"]
