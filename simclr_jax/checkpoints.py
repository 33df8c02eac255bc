"""Orbax checkpoints of the pretraining state in `workdir/checkpoints`."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Starts an asynchronous save; call `manager.wait_until_finished()` before exiting."""
  manager.save(step, args=ocp.args.StandardSave(state))


def restore(manager: ocp.CheckpointManager, target, step: int | None = None):
  """Restores `step` (default: the latest) into the structure and shardings of `target`.

  Returns None when there is no checkpoint. Raises CheckpointError, naming the directory,
  when one exists but is unreadable or does not match the model being built.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # Orbax raises many types: corrupt files, shape or tree mismatch.
    path = os.path.join(str(manager.directory), str(step))
    raise CheckpointError(
        f"Cannot restore the checkpoint at {path}: {type(e).__name__}: {e}\n"
        f"It may be corrupt (an interrupted write) or come from a different config (model "
        f"depth, width, head, optimiser). Move it away to resume from an earlier step, or "
        f"use a fresh --workdir.") from e
