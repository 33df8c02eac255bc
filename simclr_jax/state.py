"""The training state and what builds it, shared by every stage: the device mesh, the model
initialised from the config, the optimiser and the run's length.

Imports no TensorFlow, TFDS or CLU (a test checks): with `pretrain_step` it is all a
benchmark or an accelerator machine without them needs.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from simclr_jax import config_checks, models, optim

DATA_AXIS = "data"


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs. Params and statistics are plain nested dicts.

  `rng` is saved for stochastic layers; augmentation randomness lives in the tf.data
  stream (seeded by config.seed and the step), so it resumes with `step`.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array

  def checkpoint_items(self) -> dict[str, Any]:
    """The checkpoint's items: the model alone (what later stages restore), the rest."""
    return {"model": {"params": self.params, "batch_stats": self.batch_stats},
            "train": {"step": self.step, "opt_state": self.opt_state, "rng": self.rng}}

  @classmethod
  def from_checkpoint_items(cls, items: dict[str, Any]) -> "TrainState":
    return cls(params=items["model"]["params"], batch_stats=items["model"]["batch_stats"],
               **items["train"])


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis 'data'.

  Auto axes: the compiler propagates the batch sharding through the model (GSPMD), so
  BatchNorm's batch means become global all-reduces without any annotation.
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def probe_classes(config, source) -> int:
  """Classes of the online probe: the source's when `config.online_probe`, else 0 (none)."""
  return source.num_classes if config.online_probe else 0


def model_graphdef(config, num_probe_classes: int = 0) -> nnx.GraphDef:
  """The model's static structure, built without allocating parameters."""
  abstract = nnx.eval_shape(
      lambda: models.create_model(config.model, nnx.Rngs(0), num_probe_classes,
                                  config.compute_dtype))
  return nnx.split(abstract, nnx.Param, nnx.BatchStat)[0]


def _init_variables(config, num_probe_classes: int) -> tuple[Any, Any]:
  model = models.create_model(config.model, nnx.Rngs(config.seed), num_probe_classes,
                              config.compute_dtype)
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)


def init_model(config, mesh: Mesh, num_probe_classes: int = 0) -> dict[str, Any]:
  """{'params', 'batch_stats'} initialised from `config.seed`, replicated over the mesh:
  the checkpoint's `model` item, which later stages restore into."""

  def init():
    params, batch_stats = _init_variables(config, num_probe_classes)
    return {"params": params, "batch_stats": batch_stats}

  return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def init_train_state(config, tx: optax.GradientTransformation, mesh: Mesh,
                     num_probe_classes: int = 0) -> TrainState:
  """Initialises the model from `config.seed`, replicated over the mesh (every process
  computes the same values, so this also works across hosts)."""

  def init():
    params, batch_stats = _init_variables(config, num_probe_classes)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=jax.random.PRNGKey(config.seed))

  return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def training_length(config, num_train_examples: int) -> tuple[int, int]:
  """(steps_per_epoch, num_train_steps)."""
  steps_per_epoch = num_train_examples // config.batch_size
  if steps_per_epoch == 0:
    raise config_checks.ConfigError(
        f"batch_size={config.batch_size} is larger than the {num_train_examples} training "
        f"examples of split '{config.train_split}'.")
  if config.num_train_steps > 0:
    return steps_per_epoch, config.num_train_steps
  return steps_per_epoch, int(config.num_epochs * steps_per_epoch)


def create_optimizer(config, steps_per_epoch: int, num_train_steps: int):
  """(tx, schedule) from `config.optimizer`."""
  schedule = optim.learning_rate_schedule(config.optimizer, config.batch_size, steps_per_epoch,
                                          num_train_steps)
  return optim.create_optimizer(config.optimizer, schedule), schedule
