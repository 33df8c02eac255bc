"""The pretraining update: one jit-compiled step over the device mesh for any method,
with its fault guard.

views -> model input -> value_and_grad(method's loss + online probe) -> optimiser ->
EMA of the target network -> metrics. The online encoder's stochastic layers (the ViT's
drop-path) draw from a key of the state's `rng` and step (training/randomness.py). It
holds no method names (methods/ does). Imports no TensorFlow, TFDS or CLU (a test checks).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from simclr_jax import methods, precision
from simclr_jax.methods import base
from simclr_jax.sharding import batch_sharded, replicated
from simclr_jax.training import randomness
from simclr_jax.training.faults import apply_unless_faulty, fault_code, guarded_update
from simclr_jax.training.state import TrainState


def _target_model(graphdef: nnx.GraphDef, state: TrainState, params, modules) -> nnx.Module:
  """The model with the target network's weights in `modules`: what the method's loss
  calls for its targets. Every weight of it is a constant of the step (stop_gradient on
  the online ones too), so the target never receives a gradient."""
  frozen_params = jax.lax.stop_gradient(params)
  return nnx.merge(graphdef, {**frozen_params, **state.target["params"]},
                   {**state.batch_stats, **state.target["batch_stats"]})


def train_step(state: TrainState, batch: dict[str, jax.Array], *, method: base.Method,
               method_config, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
               schedule: optax.Schedule, target_momentum: optax.Schedule | None,
               normalize: bool, mesh: Mesh) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on a global batch {'views': (N, 2, H, W, 3) uint8[, 'label': (N,)]}
  sharded on 'data' (labels only for the online probe)."""
  views = precision.to_model_input(batch["views"], normalize)
  modules = method.target_modules
  # The same masks at a step whatever the device count, and again when a run resumes.
  key = randomness.run_key(state.rng, randomness.PRETRAIN_STREAM)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.batch_stats)
    target = _target_model(graphdef, state, params, modules) if modules else None
    rngs = randomness.step_rngs(key, state.step)
    loss, features, metrics = method.loss(model, target, views, method_config, mesh, rngs)
    total = loss
    if model.probe is not None:
      probe_loss, probe_accuracy = base.online_probe_loss(model, features, batch["label"])
      metrics.update(probe_loss=probe_loss, probe_accuracy=probe_accuracy)
      total = loss + probe_loss
    batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    target_stats = (base.target_part(nnx.to_pure_dict(nnx.state(target, nnx.BatchStat)),
                                     modules) if modules else None)
    return total, (metrics, batch_stats, target_stats)

  total, (metrics, batch_stats, target_stats), params, opt_state, grad_norm = guarded_update(
      loss_fn, state.params, state.opt_state, tx)
  metrics.update(learning_rate=schedule(state.step), grad_norm=grad_norm)
  new_target = None
  if modules:
    momentum = target_momentum(state.step)
    new_target = {"params": base.ema_update(state.target["params"],
                                            base.target_part(params, modules), momentum),
                  "batch_stats": target_stats}
    metrics["target_momentum"] = momentum
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, target=new_target)
  fault = fault_code(total, grad_norm, (params, batch_stats, new_target))
  metrics["fault"] = fault
  return apply_unless_faulty(fault, new_state, state), metrics


def compile_train_step(config, graphdef, tx, schedule, mesh: Mesh,
                       num_train_steps: int | None = None):
  """jit over the mesh: state replicated and donated, batch sharded on 'data'.

  `num_train_steps` sets the target network's momentum schedule (methods with one).
  """
  method = methods.get(config)
  method_config = config[method.name]
  target_momentum = None
  if method.target_modules:
    if num_train_steps is None:
      raise ValueError(f"{method.name} has a target network: pass num_train_steps, which "
                       f"sets its momentum schedule.")
    target_momentum = base.target_momentum_schedule(
        method_config.base_target_momentum, method_config.final_target_momentum,
        num_train_steps)
  step = functools.partial(train_step, method=method, method_config=method_config,
                           graphdef=graphdef, tx=tx, schedule=schedule,
                           target_momentum=target_momentum,
                           normalize=config.augment.normalize, mesh=mesh)
  return jax.jit(step, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def abstract_batch(config, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch `train_step` takes, as ShapeDtypeStructs sharded on 'data':
  {'views': (N, 2, S, S, 3) uint8[, 'label': (N,) int32 with config.online_probe]}."""
  n, size = config.batch_size, config.augment.image_size
  sharding = batch_sharded(mesh)
  batch = {"views": jax.ShapeDtypeStruct((n, 2, size, size, 3), jnp.uint8, sharding=sharding)}
  if config.online_probe:
    batch["label"] = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=sharding)
  return batch
