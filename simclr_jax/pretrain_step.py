"""The SimCLR update: one jit-compiled step over the device mesh, with its fault guard.

Imports no TensorFlow, TFDS or CLU (a test checks).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from simclr_jax import losses, models
from simclr_jax.train_state import DATA_AXIS, TrainState

# Bits of the per-step `fault` metric: which values were not finite.
FAULT_LOSS, FAULT_GRADIENTS, FAULT_PARAMETERS = 1, 2, 4


def embed_views(model: models.SimCLRModel, views: jax.Array,
                separately: bool) -> tuple[jax.Array, jax.Array]:
  """(N, 2, H, W, 3) views -> features h (N, 2, F) and embeddings z (N, 2, D), training mode.

  One pass over the 2N images (BatchNorm statistics over both views) or one pass per view
  (statistics per view, running averages updated twice, as the seed's two model calls).
  The reshape keeps each image's two views on the device that holds the image.
  """
  n = views.shape[0]
  if separately:
    (h1, z1), (h2, z2) = model(views[:, 0], train=True), model(views[:, 1], train=True)
    return jnp.stack([h1, h2], axis=1), jnp.stack([z1, z2], axis=1)
  h, z = model(views.reshape((2 * n, *views.shape[2:])), train=True)
  return h.reshape((n, 2, -1)), z.reshape((n, 2, -1))


def online_probe_loss(model: models.SimCLRModel, features: jax.Array,
                      labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cross entropy and accuracy of the online probe on (N, 2, F) features of both views.

  stop_gradient: the probe learns from the encoder, the encoder never from the labels.
  """
  logits = model.probe(jax.lax.stop_gradient(features))                   # (N, 2, C)
  labels = jnp.broadcast_to(labels[:, None], logits.shape[:2])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, schedule: optax.Schedule, temperature: float,
               separately: bool, normalize: bool,
               mesh: Mesh) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SimCLR update on a global batch {'views': (N, 2, H, W, 3) uint8[, 'label': (N,)]}
  sharded on 'data' (labels only for the online probe)."""
  views = models.image_input(batch["views"], normalize)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.batch_stats)
    features, z = embed_views(model, views, separately)
    loss, accuracy = losses.sharded_nt_xent(z[:, 0], z[:, 1], temperature, mesh, DATA_AXIS)
    metrics = {"loss": loss, "contrastive_accuracy": accuracy}
    total = loss
    if model.probe is not None:
      probe_loss, probe_accuracy = online_probe_loss(model, features, batch["label"])
      metrics.update(probe_loss=probe_loss, probe_accuracy=probe_accuracy)
      total = loss + probe_loss
    batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return total, (metrics, batch_stats)

  (total, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  metrics.update(learning_rate=schedule(state.step), grad_norm=grad_norm)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  fault = fault_code(total, grad_norm, (params, batch_stats))
  metrics["fault"] = fault
  return apply_unless_faulty(fault, new_state, state), metrics


def fault_code(loss: jax.Array, grad_norm: jax.Array, new_params) -> jax.Array:
  """int32 scalar: 0 when the step is finite, else FAULT_* bits of what is not."""
  params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                     for x in jax.tree.leaves(new_params)]))
  return (jnp.where(jnp.isfinite(loss), 0, FAULT_LOSS)
          + jnp.where(jnp.isfinite(grad_norm), 0, FAULT_GRADIENTS)
          + jnp.where(params_finite, 0, FAULT_PARAMETERS)).astype(jnp.int32)


def apply_unless_faulty(fault: jax.Array, new_state, old_state):
  """`new_state` if `fault` is 0, else `old_state`: a faulty step's update is not applied
  (and the step counter does not advance), decided on the device without a host sync."""
  return jax.tree.map(lambda new, old: jnp.where(fault == 0, new, old), new_state, old_state)


def compile_train_step(config, graphdef, tx, schedule, mesh: Mesh):
  """jit over the mesh: state replicated and donated, batch sharded on 'data'."""
  step = functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                           temperature=config.temperature,
                           separately=config.model.forward_views_separately,
                           normalize=config.augment.normalize, mesh=mesh)
  replicated = NamedSharding(mesh, P())
  return jax.jit(step, in_shardings=(replicated, NamedSharding(mesh, P(DATA_AXIS))),
                 out_shardings=(replicated, replicated), donate_argnums=0)
