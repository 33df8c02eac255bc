"""The host loop every training stage runs: pretraining, fine-tuning and the linear classifier
on augmented images.

A stage supplies its jit-compiled step, its state, its batches and how its state is
checkpointed (`Checkpointing`); the loop owns the rest, the same for all three:

- resume: the newest readable checkpoint (damaged newer ones moved aside), config checked;
- cadence: metrics fetched and logged every `log_every` steps, at an epoch's end and at the
  last step (the only host syncs); checkpoints every `checkpoint_every`, at an epoch's end,
  at the last step and on a stop signal (Orbax's `CheckpointManager` writes them);
- the non-finite stop: every step's `fault` metric is read before a checkpoint after it is
  written, and a faulty step raises `faults.TrainingDivergedError` naming it;
- save-on-signal: a stop signal (`preemption`) ends the loop after the step in flight, which
  is saved; `Result.raise_if_stopped` then raises `preemption.Preempted`;
- progress: a live bar on a terminal, else a line at every log (`progress`: step/total,
  steps/s, ETA, loss); steps/s and examples/s (`rate_name`) go to TensorBoard with the
  metrics.

A step returns (state, metrics): scalar metrics, among them `fault` (`faults.fault_code`) and
`learning_rate`. Logged means are over the steps since the last log; `learning_rate` is the
last step's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers

from simclr_jax import storage
from simclr_jax.training import (
  checkpoints,
  compile_cache,
  device_memory,
  faults,
  preemption,
  progress,
)


@dataclasses.dataclass(frozen=True)
class Cadence:
  """When the loop logs and saves: steps are 1..num_steps; `epoch_steps` > 0 marks every
  epoch's last step, where the loop logs, runs the stage's `end_of_epoch` and saves."""
  num_steps: int
  log_every: int
  checkpoint_every: int
  epoch_steps: int = 0

  def is_epoch_end(self, step: int) -> bool:
    return self.epoch_steps > 0 and step > 0 and step % self.epoch_steps == 0


@dataclasses.dataclass(frozen=True)
class Checkpointing:
  """How a stage's state is saved and restored: `to_items` gives Orbax's named items
  (name -> pytree), `from_items` the state back; `check_fields` are the config fields a
  resumed run must share with its checkpoint."""
  manager: ocp.CheckpointManager
  config: Any
  to_items: Callable[[Any], dict[str, Any]]
  from_items: Callable[[dict[str, Any]], Any]
  check_fields: tuple[str, ...]

  @classmethod
  def single(cls, manager, config, name: str, check_fields) -> Checkpointing:
    """A state saved whole as one item `name`."""
    return cls(manager, config, lambda state: {name: state}, lambda items: items[name],
               tuple(check_fields))

  def path(self, step: int) -> str:
    return str(storage.path(self.manager.directory) / str(step))


@dataclasses.dataclass
class Result:
  """How a loop ended: its state, its last step, the last logged means, and whether a stop
  signal ended it (after saving that step)."""
  state: Any
  step: int
  metrics: dict[str, float]
  stopped: bool
  checkpoint_path: str

  def raise_if_stopped(self, what: str) -> None:
    """`preemption.Preempted` for `what` ("Pretraining", say) when a signal stopped it."""
    if self.stopped:
      raise preemption.Preempted(what, self.step, self.checkpoint_path)


def resume(ckpt: Checkpointing, state, what: str):
  """The newest readable checkpoint's state (damaged newer ones moved aside), or `state`
  (the fresh one, also the restore target) when there is none."""
  restored = checkpoints.restore(ckpt.manager, ckpt.to_items(state), ckpt.config,
                                 check_fields=ckpt.check_fields, move_damaged=True)
  if restored is None:
    return state
  logging.info("Resuming %s from step %d (%s).", what, restored[0], ckpt.manager.directory)
  return ckpt.from_items(restored[1])


def run(step_fn: Callable[[Any, Any], tuple[Any, dict[str, jax.Array]]], state,
        batches: Iterator[Any], *, start_step: int, cadence: Cadence, ckpt: Checkpointing,
        writer: metric_writers.MetricWriter, diverged_advice: str, examples_per_step: int,
        rate_name: str = "examples_per_second", metric_prefix: str = "",
        end_of_epoch: Callable[[Any, int], Any] | None = None,
        label: str = "Training", batch_field: device_memory.BatchField | None = None) -> Result:
  """Steps start_step + 1 .. cadence.num_steps of `step_fn` on `batches` (which start at
  start_step + 1); logs, checkpoints and stops as the module says.

  `end_of_epoch(state, step) -> state` (fine-tuning's evaluation) runs at every epoch's end
  before its checkpoint, and first of all when a run resumes exactly at an epoch's end (it
  may have stopped before it ran; the stage's function skips work already recorded).
  `diverged_advice` says what to change when a step is not finite. Metrics are written with
  `metric_prefix` (the random-init baseline's 'random_init_'); `label` names the loop in
  its progress ("Pretraining"). With `batch_field` (the config field of the step's batch),
  the first step is compiled before it runs and checked against the devices' memory, and an
  out-of-memory is one `device_memory.OutOfMemoryError` naming that field.
  """
  if end_of_epoch is not None and cadence.is_epoch_end(start_step):
    state = end_of_epoch(state, start_step)
  pending, last, step, stop = [], {}, start_step, False
  what = f"the {label.lower()} step"
  with (progress.Progress(cadence.num_steps, initial=start_step, label=label) as shown,
        device_memory.out_of_memory_as_error(what.capitalize(), batch_field)):
    for step in range(start_step + 1, cadence.num_steps + 1):
      batch = next(batches)
      first = step == start_step + 1
      timed = compile_cache.logged_first_compile(what) if first else contextlib.nullcontext()
      with jax.profiler.StepTraceAnnotation("train", step_num=step), timed:
        if first and batch_field is not None:
          device_memory.check_step_fits(step_fn, state, batch, what.capitalize(), batch_field)
        state, metrics = step_fn(state, batch)
      pending.append(metrics)
      if step == start_step + 1:
        jax.block_until_ready(metrics)  # Rates count from after compilation.
      shown.update(step)
      stop = preemption.reached()
      epoch_end = cadence.is_epoch_end(step)
      save = (stop or epoch_end or step == cadence.num_steps or
              step % cadence.checkpoint_every == 0)
      if save or step % cadence.log_every == 0:
        fetched = jax.device_get(pending)
        pending = []
        faults.raise_on_fault(fetched, step, ckpt.manager, diverged_advice)
        last = mean_metrics(fetched)
        rate = shown.rate()
        if rate is not None:  # Undefined before the second step.
          last.update({"steps_per_sec": rate, rate_name: rate * examples_per_step})
        writer.write_scalars(step, {metric_prefix + name: value for name, value in last.items()})
        shown.report({"loss": last["loss"]} if "loss" in last else {})
      if epoch_end and end_of_epoch is not None:
        state = end_of_epoch(state, step)
      if save:
        checkpoints.save(ckpt.manager, step, ckpt.to_items(state), ckpt.config)
      if stop:
        logging.warning("Stopping after step %d (%s); waiting for its checkpoint to commit.",
                        step, preemption.signal_name())
        break
  ckpt.manager.wait_until_finished()
  writer.flush()
  return Result(state, step, last, stop, ckpt.path(step))


def mean_metrics(fetched: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """The means of the steps' metrics since the last log (`fault` left out: the loop has
  checked it), with the last step's `learning_rate`."""
  mean = {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]
          if key != "fault"}
  if "learning_rate" in fetched[-1]:
    mean["learning_rate"] = float(fetched[-1]["learning_rate"])
  return mean
