"""Pretraining, the stage, for any method: data, checkpoints, logging and the loop around
the jit-compiled update of `pretrain_step`."""

from __future__ import annotations

import itertools
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from jax.sharding import Mesh

from simclr_jax import (checkpoints, config_checks, faults, optim, preemption, summaries,
                        visualize)
from simclr_jax.data import augmentations, input_pipeline
# The step and the state live in TensorFlow-free modules.
from simclr_jax.pretrain_step import compile_train_step
from simclr_jax.sharding import batch_sharded, create_mesh
from simclr_jax.state import (TrainState, check_model_config, create_optimizer,
                              init_train_state, model_fields, model_graphdef, probe_classes,
                              training_length)



DIVERGED_ADVICE = ("Lower config.optimizer.base_learning_rate (or raise the method's "
                   "temperature), and check the input data.")


def resume_fields(config) -> tuple[str, ...]:
  """Config fields a resumed run must share with its checkpoint: the model's and those that
  shape the optimiser's state."""
  return (*model_fields(config), "optimizer.name", "optimizer.learning_rate_multipliers")


def check_config(config) -> None:
  """ConfigError for a pretraining config that would fail later or silently do the wrong
  thing: the stage's own fields, then each block's own check."""
  config_checks.check_batch_size("batch_size", config.batch_size)
  config_checks.require(config.num_epochs > 0 or config.num_train_steps > 0,
                        "Set num_epochs > 0 or num_train_steps > 0.")
  config_checks.check_positive_ints(
      config, ("log_every_steps", "checkpoint_every_steps", "max_checkpoints_to_keep"))
  optim.check_config("optimizer", config.optimizer)
  augmentations.check_augment_config(config.augment)
  check_model_config(config)


def param_counts(params) -> dict[str, int]:
  """{'params_<module>': count} for each top-level module (encoder, heads, probe)."""
  return {f"params_{name}": int(parameter_overview.count_parameters(tree))
          for name, tree in params.items()}


def pretrain(config, workdir: str) -> dict[str, Any]:
  """Pretrains (or resumes) in `workdir`; returns and writes pretrain_summary.json."""
  check_config(config)
  input_pipeline.configure_tensorflow()
  mesh = create_mesh()
  source = input_pipeline.create_source(config)
  num_train_examples = source.num_examples(config.train_split)
  steps_per_epoch, num_train_steps = training_length(config, num_train_examples)
  tx, schedule = create_optimizer(config, steps_per_epoch, num_train_steps)
  num_probe_classes = probe_classes(config, source)
  graphdef = model_graphdef(config, num_probe_classes)

  state = init_train_state(config, tx, mesh, num_probe_classes)
  # Closing the manager waits for a save in flight and stops Orbax's background threads,
  # also when the run ends with an error.
  with checkpoints.create_manager(checkpoints.checkpoint_dir(workdir),
                                  config.max_checkpoints_to_keep) as manager:
    state = resume(manager, state, config)
    start_step = int(state.step)
    counts = param_counts(state.params)
    if start_step >= num_train_steps:
      logging.info("The checkpoint at step %d already reaches num_train_steps=%d: nothing to "
                   "train (raise num_epochs or num_train_steps to continue).", start_step,
                   num_train_steps)
      return summaries.read_json(workdir, "pretrain_summary.json")

    writer = metric_writers.create_default_writer(workdir,
                                                  just_logging=jax.process_index() > 0)
    if start_step == 0:
      parameter_overview.log_parameter_overview(state.params)
      writer.write_hparams(_flat_hparams(config))
    else:
      logging.info("Resuming from checkpoint step %d.", start_step)
    logging.info("Pretraining %s on %d %s examples, %d steps (%d per epoch), global batch %d "
                 "over %d devices; parameters: %s.", config.method, num_train_examples,
                 config.train_split, num_train_steps, steps_per_epoch, config.batch_size,
                 jax.device_count(), counts)

    step_fn = compile_train_step(config, graphdef, tx, schedule, mesh, num_train_steps)
    batches = _device_batches(config, source, mesh, start_step, writer)
    with jax.set_mesh(mesh):
      step, last, stopped = _train_loop(config, state, step_fn, batches, manager, writer,
                                        start_step, num_train_steps)

    summary = {"method": config.method, "step": step, "num_train_steps": num_train_steps,
               "resumed_from_step": start_step, **counts,
               **last,  # The last logged means: loss, the method's metrics, views/s.
               "stopped_by_signal": stopped,
               "devices": jax.device_count(), "processes": jax.process_count()}
    summaries.write_json(workdir, "pretrain_summary.json", summary)
    if stopped:
      raise preemption.Preempted("Pretraining", step,
                                 str(checkpoints.checkpoint_dir(workdir) / str(step)))
    return summary


def resume(manager, state: TrainState, config) -> TrainState:
  """The newest readable checkpoint's state (damaged newer ones moved aside), or `state`
  when there is none."""
  restored = checkpoints.restore(manager, state.checkpoint_items(), config,
                                 check_fields=resume_fields(config), move_damaged=True)
  return state if restored is None else TrainState.from_checkpoint_items(restored[1])


def _device_batches(config, source, mesh: Mesh, start_step: int, writer):
  """Global batches from `start_step` on, sharded on 'data'; a fresh run shows its first
  batch's view pairs in TensorBoard (what the model is trained on)."""
  host_batches = input_pipeline.pretrain_dataset(config, source, start_step).as_numpy_iterator()
  first = next(host_batches)
  if start_step == 0:
    writer.write_images(0, {"augmented_view_pairs": visualize.view_pairs_grid(
        first["views"])[None]})
  return input_pipeline.global_batches(itertools.chain([first], host_batches),
                                       batch_sharded(mesh))


def _train_loop(config, state: TrainState, step_fn, batches, manager, writer, start_step: int,
                num_train_steps: int) -> tuple[int, dict[str, float], bool]:
  """Steps start_step + 1 .. num_train_steps; logs and checkpoints.

  A stop signal ends the loop after the step in flight, which is checkpointed. Each
  step's fault flag is read with the metrics (at log and checkpoint steps, the only host
  syncs), so a checkpoint is only written after every step before it was found finite.

  Returns:
    (last step, its logged metrics, whether a stop signal ended the loop).
  """
  report = periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer)
  meter = _ThroughputMeter(2 * config.batch_size)
  pending, last, step, stop = [], {}, start_step, False
  for step in range(start_step + 1, num_train_steps + 1):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      state, metrics = step_fn(state, next(batches))
    pending.append(metrics)
    report(step)
    if step == start_step + 1:
      jax.block_until_ready(metrics)  # Start timing after compilation.
      meter.restart(step)
    stop = preemption.reached()
    final = stop or step == num_train_steps
    if final or step % config.log_every_steps == 0 or step % config.checkpoint_every_steps == 0:
      fetched = jax.device_get(pending)
      pending = []
      faults.raise_on_fault(fetched, step, manager, DIVERGED_ADVICE)
      last = _mean_metrics(fetched)
      rate = meter.rate(step)
      if rate is not None:  # Undefined before the second step.
        last["views_per_second"] = rate
      writer.write_scalars(step, last)
    if final or step % config.checkpoint_every_steps == 0:
      checkpoints.save(manager, step, state.checkpoint_items(), config)
    if stop:
      logging.warning("Stopping after step %d (%s); waiting for its checkpoint to commit.",
                      step, preemption.signal_name())
      break
  manager.wait_until_finished()
  writer.flush()
  return step, last, stop


def _mean_metrics(fetched: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Averages the metrics of the steps since the last log."""
  mean = {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]
          if key != "fault"}
  mean["learning_rate"] = float(fetched[-1]["learning_rate"])
  return mean


class _ThroughputMeter:
  """Views per second between logs, excluding the compilation step."""

  def __init__(self, views_per_step: int):
    self.views_per_step = views_per_step
    self.start_step, self.start_time = 0, time.perf_counter()

  def restart(self, step: int) -> None:
    self.start_step, self.start_time = step, time.perf_counter()

  def rate(self, step: int) -> float | None:
    steps = step - self.start_step
    if steps <= 0:
      return None
    return steps * self.views_per_step / (time.perf_counter() - self.start_time)


def _flat_hparams(config) -> dict[str, Any]:
  flat = {}

  def visit(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if hasattr(value, "items"):
        visit(name + ".", value)
      else:
        flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)

  visit("", config)
  return flat
