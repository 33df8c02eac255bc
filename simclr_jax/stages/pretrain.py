"""Pretraining, the stage, for any method: the data, the state and the jit-compiled update
of `training.pretrain_step`, run by the host loop (`training.loop`)."""

from __future__ import annotations

import itertools
from typing import Any

import jax
from absl import logging
from clu import metric_writers, parameter_overview
from jax.sharding import Mesh

from simclr_jax import config_checks, config_text, storage
from simclr_jax.data import input_pipeline
from simclr_jax.data.augmentations import settings
from simclr_jax.evaluation import visualize
from simclr_jax.sharding import batch_sharded, create_mesh
from simclr_jax.training import checkpoints, device_memory, loop, optim, summaries
from simclr_jax.training import model as model_lib

# The step and the state live in TensorFlow-free modules.
from simclr_jax.training.pretrain_step import compile_train_step
from simclr_jax.training.state import (
  TrainState,
  create_optimizer,
  init_train_state,
  training_length,
)

PARAMETERS_FILE = "parameters.txt"  # The parameter table: name, shape, size, mean, std.
DIVERGED_ADVICE = ("Lower config.optimizer.base_learning_rate (or raise the method's "
                   "temperature), and check the input data.")


def resume_fields(config) -> tuple[str, ...]:
  """Config fields a resumed run must share with its checkpoint: the model's and those that
  shape the optimiser's state (its transformations and their groups)."""
  return (*model_lib.model_fields(config), "optimizer.name", "optimizer.learning_rate_multipliers",
          "optimizer.gradient_clip_norm", "optimizer.frozen_patterns")


def check_config(config) -> None:
  """ConfigError for a pretraining config that would fail later or silently do the wrong
  thing: the stage's own fields, then each block's own check."""
  config_checks.check_batch_size("batch_size", config.batch_size)
  config_checks.require(config.num_epochs > 0 or config.num_train_steps > 0,
                        "Set num_epochs > 0 or num_train_steps > 0.")
  config_checks.check_positive_ints(
      config, ("log_every_steps", "checkpoint_every_steps", "max_checkpoints_to_keep"))
  optim.check_config("optimizer", config.optimizer)
  settings.check_augment_config(config.augment)
  model_lib.check_model_config(config)
  input_pipeline.check_config(config)


def param_counts(params) -> dict[str, int]:
  """{'params_<module>': count} for each top-level module (encoder, heads, probe)."""
  return {f"params_{name}": int(parameter_overview.count_parameters(tree))
          for name, tree in params.items()}


def pretrain(config, workdir: str) -> dict[str, Any]:
  """Pretrains (or resumes) in `workdir`; returns and writes pretrain_summary.json."""
  check_config(config)
  input_pipeline.configure_tensorflow()
  mesh = create_mesh()
  source = input_pipeline.create_source(config, stage="pretrain")
  num_train_examples = source.num_examples(config.train_split)
  steps_per_epoch, num_train_steps = training_length(config, num_train_examples)
  tx, schedule = create_optimizer(config, steps_per_epoch, num_train_steps)
  num_probe_classes = model_lib.probe_classes(config, source)
  graphdef = model_lib.model_graphdef(config, num_probe_classes)

  state = init_train_state(config, tx, mesh, num_probe_classes)
  # Closing the manager waits for a save in flight and stops Orbax's background threads,
  # also when the run ends with an error.
  with checkpoints.create_manager(checkpoints.checkpoint_dir(workdir),
                                  config.max_checkpoints_to_keep) as manager:
    ckpt = loop.Checkpointing(manager, config, TrainState.checkpoint_items,
                              TrainState.from_checkpoint_items, resume_fields(config))
    state = loop.resume(ckpt, state, "pretraining")
    # Only now: a resume refused for another model leaves the file of the run it was made
    # with, which the refusal names (checkpoints._rerun_advice).
    config_text.write(config, workdir, "pretrain")
    start_step = int(state.step)
    counts = param_counts(state.params)
    if start_step >= num_train_steps:
      logging.info("The checkpoint at step %d already reaches num_train_steps=%d: nothing to "
                   "train (raise num_epochs or num_train_steps to continue).", start_step,
                   num_train_steps)
      return summaries.read_json(workdir, "pretrain_summary.json")

    writer = metric_writers.create_default_writer(workdir,
                                                  just_logging=jax.process_index() > 0)
    if start_step == 0:  # The table and the hyper-parameters, out of the log.
      summaries.write_text(workdir, PARAMETERS_FILE,
                           parameter_overview.get_parameter_overview(state.params) + "\n")
      writer.write_hparams(_flat_hparams(config))
    logging.info("Pretraining %s on %d %s examples, %d steps (%d per epoch), global batch %d "
                 "over %d devices; %s parameters (%s; each tensor in %s).", config.method,
                 num_train_examples, config.train_split, num_train_steps, steps_per_epoch,
                 config.batch_size, jax.device_count(), f"{sum(counts.values()):,}",
                 ", ".join(f"{name[len('params_'):]} {count:,}" for name, count in counts.items()),
                 storage.path(workdir) / PARAMETERS_FILE)

    step_fn = compile_train_step(config, graphdef, tx, schedule, mesh, num_train_steps)
    batches = _device_batches(config, source, mesh, start_step, writer)
    cadence = loop.Cadence(num_train_steps, config.log_every_steps,
                           config.checkpoint_every_steps)
    with jax.set_mesh(mesh):
      result = loop.run(step_fn, state, batches, start_step=start_step, cadence=cadence,
                        ckpt=ckpt, writer=writer, diverged_advice=DIVERGED_ADVICE,
                        examples_per_step=2 * config.batch_size, rate_name="views_per_second",
                        label="Pretraining",
                        batch_field=device_memory.BatchField("batch_size", config.batch_size))

    summary = {"method": config.method, "step": result.step, "num_train_steps": num_train_steps,
               "resumed_from_step": start_step, **counts,
               **result.metrics,  # The last logged means: loss, the method's metrics, views/s.
               "stopped_by_signal": result.stopped,
               "devices": jax.device_count(), "processes": jax.process_count()}
    summaries.write_json(workdir, "pretrain_summary.json", summary)
    result.raise_if_stopped("Pretraining")
    return summary


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
