"""The fault guard of every training loop: a step whose loss, gradients or new parameters
are not finite is not applied (decided on the device, no host sync), and the loop raises
`TrainingDivergedError` naming it when it next reads the metrics, before any checkpoint
after it is written. Imports no TensorFlow, TFDS or CLU."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Bits of the per-step `fault` metric: which values were not finite.
FAULT_LOSS, FAULT_GRADIENTS, FAULT_PARAMETERS = 1, 2, 4


class TrainingDivergedError(RuntimeError):
  """A step produced a non-finite loss, gradient or parameter."""


def fault_code(loss: jax.Array, grad_norm: jax.Array, new_params) -> jax.Array:
  """int32 scalar: 0 when the step is finite, else FAULT_* bits of what is not."""
  params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                     for x in jax.tree.leaves(new_params)]))
  return (jnp.where(jnp.isfinite(loss), 0, FAULT_LOSS)
          + jnp.where(jnp.isfinite(grad_norm), 0, FAULT_GRADIENTS)
          + jnp.where(params_finite, 0, FAULT_PARAMETERS)).astype(jnp.int32)


def guarded_update(loss_fn: Callable[[Any], tuple[jax.Array, Any]], params, opt_state,
                   tx: optax.GradientTransformation):
  """The update every training step shares: gradients of `loss_fn` (params -> (loss, aux)),
  the optimiser's step and the gradients' global norm.

  Returns:
    (loss, aux, new params, new optimiser state, gradient norm): the caller builds its new
    state from them and passes it to `apply_unless_faulty` with `fault_code`.
  """
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return loss, aux, optax.apply_updates(params, updates), opt_state, optax.global_norm(grads)


def apply_unless_faulty(fault: jax.Array, new_state, old_state):
  """`new_state` if `fault` is 0, else `old_state`: a faulty step's update is not applied
  (and the step counter does not advance), decided on the device without a host sync."""
  return jax.tree.map(lambda new, old: jnp.where(fault == 0, new, old), new_state, old_state)


def raise_on_fault(fetched: list[dict[str, np.ndarray]], step: int, manager,
                   advice: str) -> None:
  """Raises TrainingDivergedError naming the first faulty step among the `fetched` metrics
  of the steps up to `step` (the checkpoints written so far precede it); `advice` says
  what to change."""
  faults = np.array([m["fault"] for m in fetched])
  if not faults.any():
    return
  index = int(np.flatnonzero(faults)[0])
  code = int(faults[index])
  what = [name for bit, name in ((FAULT_LOSS, "loss"), (FAULT_GRADIENTS, "gradients"),
                                 (FAULT_PARAMETERS, "parameters")) if code & bit]
  manager.wait_until_finished()
  good = manager.latest_step()
  where = (f"the last good checkpoint is step {good} in {manager.directory} (rerunning resumes "
           f"there)" if good is not None else "no checkpoint was written")
  raise TrainingDivergedError(
      f"Non-finite {' and '.join(what)} at step {step - len(fetched) + index + 1}: its update "
      f"was not applied and nothing after it was saved; {where}. {advice}")
