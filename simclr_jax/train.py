"""SimCLR pretraining: one jit-compiled update over a device mesh, owned by `pretrain`."""

from __future__ import annotations

import functools
import itertools
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from simclr_jax import (checkpoints, config_checks, input_pipeline, losses, models, optim,
                        preemption, summaries, visualize)

DATA_AXIS = "data"
# Config fields a resumed run must share with its checkpoint: the model's and the
# optimiser's (its state's structure).
RESUME_FIELDS = (*checkpoints.MODEL_FIELDS, "optimizer.name")
# Bits of the per-step `fault` metric: which values were not finite.
FAULT_LOSS, FAULT_GRADIENTS, FAULT_PARAMETERS = 1, 2, 4


class TrainingDivergedError(RuntimeError):
  """A step produced a non-finite loss, gradient or parameter."""


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
      lambda: models.create_model(config.model, nnx.Rngs(0), num_probe_classes))
  return nnx.split(abstract, nnx.Param, nnx.BatchStat)[0]


def _init_variables(config, num_probe_classes: int) -> tuple[Any, Any]:
  model = models.create_model(config.model, nnx.Rngs(config.seed), num_probe_classes)
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


def param_counts(params) -> dict[str, int]:
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  return {"params_encoder": count(params["encoder"]), "params_head": count(params["head"])}


def pretrain(config, workdir: str) -> dict[str, Any]:
  """Pretrains (or resumes) in `workdir`; returns and writes pretrain_summary.json."""
  config_checks.check_pretrain_config(config)
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
    logging.info("Pretraining on %d %s examples, %d steps (%d per epoch), global batch %d "
                 "over %d devices; encoder %d params, head %d.", num_train_examples,
                 config.train_split, num_train_steps, steps_per_epoch, config.batch_size,
                 jax.device_count(), counts["params_encoder"], counts["params_head"])

    step_fn = compile_train_step(config, graphdef, tx, schedule, mesh)
    batches = _device_batches(config, source, mesh, start_step, writer)
    with jax.set_mesh(mesh):
      step, last, stopped = _train_loop(config, state, step_fn, batches, manager, writer,
                                        start_step, num_train_steps)

    summary = {"step": step, "num_train_steps": num_train_steps,
               "resumed_from_step": start_step, **counts,
               "loss": last.get("loss"), "contrastive_accuracy": last.get("contrastive_accuracy"),
               "views_per_second": last.get("views_per_second"),
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
                                 check_fields=RESUME_FIELDS, move_damaged=True)
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
                                       NamedSharding(mesh, P(DATA_AXIS)))


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
      raise_on_fault(fetched, step, manager)
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


def raise_on_fault(fetched: list[dict[str, np.ndarray]], step: int, manager) -> None:
  """Raises TrainingDivergedError naming the first faulty step among the `fetched` metrics
  of the steps up to `step` (the checkpoints written so far precede it)."""
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
      f"was not applied and nothing after it was saved; {where}. Lower "
      f"config.optimizer.base_learning_rate or raise config.temperature, and check the input "
      f"data.")


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
