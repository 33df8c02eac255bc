"""The pretraining state: `TrainState` (what a resumed run needs), its initialisation from
`config.seed`, the optimiser and the run's length. The model it holds is `training.model`'s.

Stages import this module, never each other. It imports no TensorFlow, TFDS or CLU (a
test checks): with `pretrain_step` it is all a benchmark or an accelerator machine
without them needs.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from simclr_jax import config_checks, methods
from simclr_jax.methods import base
from simclr_jax.sharding import replicated
from simclr_jax.training import model as model_lib
from simclr_jax.training import optim


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs. Params and statistics are plain nested dicts.

  `target` is the EMA target network, {'params', 'batch_stats'} of the method's
  `target_modules`, or None for methods without one. `rng` is saved for stochastic layers;
  augmentation randomness lives in the tf.data stream (seeded by config.seed and the step),
  so it resumes with `step`.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  target: Any = None

  def checkpoint_items(self) -> dict[str, Any]:
    """The checkpoint's items: the model alone (what later stages restore), the rest."""
    train = {"step": self.step, "opt_state": self.opt_state, "rng": self.rng}
    if self.target is not None:
      train["target"] = self.target
    return {"model": {"params": self.params, "batch_stats": self.batch_stats}, "train": train}

  @classmethod
  def from_checkpoint_items(cls, items: dict[str, Any]) -> "TrainState":
    return cls(params=items["model"]["params"], batch_stats=items["model"]["batch_stats"],
               **items["train"])


def init_train_state(config, tx: optax.GradientTransformation, mesh: Mesh,
                     num_probe_classes: int = 0) -> TrainState:
  """Initialises the model from `config.seed`, replicated over the mesh (every process
  computes the same values, so this also works across hosts). A target network starts as
  a copy of the online modules it follows."""
  return jax.jit(_init_fn(config, tx, num_probe_classes), out_shardings=replicated(mesh))()


def abstract_train_state(config, tx: optax.GradientTransformation, mesh: Mesh,
                         num_probe_classes: int = 0) -> TrainState:
  """`init_train_state`'s structure, shapes, dtypes and shardings as ShapeDtypeStructs,
  traced but neither compiled nor run: what an ahead-of-time compile of the step takes."""
  sharding = replicated(mesh)
  shapes = jax.eval_shape(_init_fn(config, tx, num_probe_classes))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      shapes)


def _init_fn(config, tx: optax.GradientTransformation, num_probe_classes: int):
  """() -> TrainState from `config.seed`."""
  modules = methods.get(config).target_modules

  def init():
    params, batch_stats = model_lib.init_variables(config, num_probe_classes)
    target = None
    if modules:
      target = {"params": base.target_part(params, modules),
                "batch_stats": base.target_part(batch_stats, modules)}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=jax.random.PRNGKey(config.seed),
                      target=target)

  return init


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


