"""The fine-tuning stage: the pretrained encoder of any method, a linear classifier on it
(optionally on the projection head's first layer, as SimCLR v2), all layers trained with
labels, on a stratified fraction of the training split or on another dataset.

SimCLR v2 (Chen et al., 2020b, "Big Self-Supervised Models are Strong Semi-Supervised
Learners", Sections 2-3 and Appendix B) fine-tunes from the first layer of the 3-layer
projection head, with LARS at 0.005 * sqrt(batch) (0.16 at batch 1024), no weight decay and
no warm-up, 60 epochs on 1% of the labels and 30 on 10%, with random crops and flips only
and global BatchNorm. The classifier starts at zero (the official code's
zero_init_logits_layer). `configs/food101_finetune.py` carries those protocols.

Each epoch ends with exact top-1 / top-5 on the evaluation split (every example once:
padded batches with a mask), written to TensorBoard; the run is checkpointed (every
`checkpoint_every_steps`, at every epoch's end and on a stop signal) and resumes where it
stopped. `finetune.json` holds the result.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from flax import nnx

from simclr_jax import (backbones, config_checks, config_text, methods, precision, sharding,
                        storage)
from simclr_jax.data import input_pipeline, subsets
from simclr_jax.sharding import batch_sharded, replicated
from simclr_jax.training import (checkpoints, device_memory, faults, loop, optim, randomness,
                                 summaries)
from simclr_jax.training import model as model_lib

DATA_FIELDS = ("dataset", "data_dir", "train_split", "eval_split")
ENCODER_PREFIX = "encoder/"  # The Classifier's encoder, in its parameter paths.
DIVERGED_ADVICE = "Lower config.finetune.optimizer.base_learning_rate, and check the labels."


@flax.struct.dataclass
class FinetuneState:
  """A fine-tuning run: the classifier model's variables, the optimiser, and `history`
  (epochs, 2) float32, each epoch's (top-1, top-5) on the evaluation split (NaN until
  measured), so a resumed run keeps the epochs it measured."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  history: jax.Array


class Classifier(nnx.Module):
  """The encoder, optionally the projection head's first layer (Linear, BatchNorm, ReLU),
  and a linear classifier: (B, H, W, 3) model input -> (B, num_classes) float32 logits."""

  def __init__(self, encoder: nnx.Module, num_classes: int, rngs: nnx.Rngs,
               head_linear: nnx.Linear | None = None, head_norm: nnx.BatchNorm | None = None):
    self.encoder = encoder
    self.head_linear = head_linear
    self.head_norm = head_norm
    width = encoder.num_features if head_linear is None else head_linear.out_features
    self.classifier = nnx.Linear(width, num_classes, kernel_init=nnx.initializers.zeros_init(),
                                 rngs=rngs)

  def __call__(self, images: jax.Array, train: bool,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """`rngs`: the encoder's stochastic layers (drop-path) when training; None: none."""
    h = self.encoder(images, train=train, rngs=rngs)
    if self.head_linear is not None:
      h = self.head_linear(h)
      if self.head_norm is not None:
        h = self.head_norm(h, use_running_average=not train)
      h = nnx.relu(h).astype(jnp.float32)
    return self.classifier(h)


# ------------------------------------------------------------------------ the config


def data_config(config):
  """The config the fine-tuning data comes from: the pretraining's, with the fields that
  `config.finetune` sets (dataset, data_dir, splits, image size) replacing its own."""
  data = config.copy_and_resolve_references()
  for name in DATA_FIELDS:
    if config.finetune[name] is not None:
      data[name] = config.finetune[name]
  if config.finetune.image_size is not None:
    data.augment.image_size = config.finetune.image_size
  return data


def check_config(config) -> None:
  """ConfigError for a `config.finetune` that cannot work (its settings, then the head it
  starts from)."""
  check_settings(config)
  check_head(config)


def check_settings(config) -> None:
  """ConfigError for `config.finetune` settings that cannot work, whatever the checkpoint."""
  block = config.finetune
  config_checks.check_batch_size("finetune.batch_size", block.batch_size)
  config_checks.require(0 < block.label_fraction <= 1, f"finetune.label_fraction must be in "
                        f"(0, 1] (0.01 = 1% of the labels), got {block.label_fraction}.")
  config_checks.require(block.epochs > 0, f"finetune.epochs must be > 0, got {block.epochs}.")
  config_checks.require(0 <= block.label_smoothing < 1, f"finetune.label_smoothing must be in "
                        f"[0, 1), got {block.label_smoothing}.")
  optim.check_config("finetune.optimizer", block.optimizer)
  if block.optimizer.layer_decay != 1:
    backbones.num_layers(config.model)  # ConfigError for a backbone without layers.
  input_pipeline.check_config(config)
  config_checks.check_positive_ints(block, ("log_every_steps", "checkpoint_every_steps"),
                                    "finetune.")


def check_head(config) -> None:
  """ConfigError if `finetune.from_head_layer` asks for a head layer the model lacks."""
  if config.finetune.from_head_layer:
    head = methods.get(config).projection_head
    model = nnx.eval_shape(lambda: model_lib.build_model(config, nnx.Rngs(0)))
    config_checks.require(
        len(getattr(model, head).linears) >= 2,
        f"finetune.from_head_layer keeps the first layer of the {config.method} projection "
        f"head '{head}', which needs at least two layers (its first is then Linear, "
        f"BatchNorm, ReLU).")


# ------------------------------------------------------------------------- the model


def build_classifier(config, num_classes: int, rngs: nnx.Rngs) -> Classifier:
  """The method's encoder (and its head's first layer when `finetune.from_head_layer`)
  with a zero-initialised linear classifier, computing in config.compute_dtype."""
  pretrained = model_lib.build_model(config, rngs)
  head_linear = head_norm = None
  if config.finetune.from_head_layer:
    head = getattr(pretrained, methods.get(config).projection_head)
    head_linear = head.linears[0]
    head_norm = head.norms[0] if head.batch_norm else None
  return Classifier(pretrained.encoder, num_classes, rngs, head_linear, head_norm)


def classifier_variables(config, num_classes: int, model_item: dict[str, Any]):
  """{'params', 'batch_stats'} of the classifier model: the encoder (and head layer) from
  `model_item`, a pretraining checkpoint's {'params', 'batch_stats'}, and a fresh
  classifier."""
  fresh = build_classifier(config, num_classes, nnx.Rngs(config.seed))
  _, params, batch_stats = nnx.split(fresh, nnx.Param, nnx.BatchStat)
  variables = {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(batch_stats)}
  head = methods.get(config).projection_head
  kept = {"encoder": lambda tree: tree["encoder"],
          "head_linear": lambda tree: tree[head]["linears"][0],
          "head_norm": lambda tree: tree[head]["norms"][0]}
  for kind, tree in variables.items():
    for name, part in kept.items():
      if name in tree:
        tree[name] = part(model_item[kind])
  return variables


def classifier_layers(config) -> optim.Layers | None:
  """The classifier model's parameters by layer, for finetune.optimizer.layer_decay: the
  encoder's ('encoder/...') from its backbone family, everything after it (head layer,
  classifier) in the last, as MAE's head (util/lr_decay.py:75-76). None without layer
  decay (any backbone)."""
  if config.finetune.optimizer.layer_decay == 1:
    return None
  encoder_layer = backbones.layer_of(config.model)
  last = backbones.num_layers(config.model)

  def layer_of(path: str) -> int:
    if path.startswith(ENCODER_PREFIX):
      return encoder_layer(path[len(ENCODER_PREFIX):])
    return last

  return optim.Layers(last, layer_of)


# ------------------------------------------------------------------------ the steps


def train_step(train_state: FinetuneState, batch: dict[str, jax.Array], *, graphdef, tx,
               schedule, num_classes: int, label_smoothing: float, normalize: bool,
               seed: int) -> tuple[FinetuneState, dict[str, jax.Array]]:
  """One update on {'image': (N, H, W, 3) uint8, 'label': (N,)} sharded on 'data'; BatchNorm
  statistics over the global batch; the encoder's drop-path (model.vit.drop_path_rate)
  drawn from `seed` and the step (training/randomness.py), so a resumed run repeats it."""
  images = precision.to_model_input(batch["image"], normalize)
  targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
  key = randomness.run_key(seed, randomness.FINETUNE_STREAM)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, train_state.batch_stats)
    logits = model(images, train=True, rngs=randomness.step_rngs(key, train_state.step))
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, (nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), accuracy)

  loss, (batch_stats, accuracy), params, opt_state, grad_norm = faults.guarded_update(
      loss_fn, train_state.params, train_state.opt_state, tx)
  new_state = train_state.replace(step=train_state.step + 1, params=params,
                                  batch_stats=batch_stats, opt_state=opt_state)
  fault = faults.fault_code(loss, grad_norm, (params, batch_stats))
  metrics = {"loss": loss, "train_accuracy": accuracy, "grad_norm": grad_norm,
             "learning_rate": schedule(train_state.step), "fault": fault}
  return faults.apply_unless_faulty(fault, new_state, train_state), metrics


def eval_step(params, batch_stats, batch: dict[str, jax.Array], *, graphdef,
              normalize: bool) -> jax.Array:
  """(3,) int32: top-1 hits, top-5 hits and real examples of a padded evaluation batch
  {'image', 'label', 'mask'} (BatchNorm in inference mode)."""
  logits = nnx.merge(graphdef, params, batch_stats)(
      precision.to_model_input(batch["image"], normalize), train=False)
  top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  hits = top == batch["label"][:, None]
  mask = batch["mask"]
  return jnp.stack([jnp.sum(hits[:, 0] & mask), jnp.sum(jnp.any(hits, -1) & mask),
                    jnp.sum(mask)]).astype(jnp.int32)


def compile_steps(config, graphdef, tx, schedule, num_classes: int, mesh):
  """(train_step, eval_step) jit-compiled over the mesh: state replicated (donated to the
  update), batches sharded on 'data'."""
  normalize = config.augment.normalize
  update = functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                             num_classes=num_classes,
                             label_smoothing=config.finetune.label_smoothing,
                             normalize=normalize, seed=config.seed)
  evaluate_batch = functools.partial(eval_step, graphdef=graphdef, normalize=normalize)
  return (jax.jit(update, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                  out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0),
          jax.jit(evaluate_batch,
                  in_shardings=(replicated(mesh), replicated(mesh), batch_sharded(mesh)),
                  out_shardings=replicated(mesh)))


def evaluate_split(eval_fn, train_state: FinetuneState, data, source,
                   mesh) -> tuple[float, float, int]:
  """(top-1, top-5, examples) over every example of data.eval_split, once each."""
  batch_size = data.finetune.batch_size
  ds = input_pipeline.eval_dataset(data, source, data.eval_split, batch_size)
  batches = input_pipeline.global_batches(
      input_pipeline.padded_eval_batches(ds, input_pipeline.local_batch_size(batch_size)),
      batch_sharded(mesh))
  totals = jnp.zeros(3, jnp.int32)
  for batch in batches:  # Summed on the devices: one host sync per evaluation, not per batch.
    totals = totals + eval_fn(train_state.params, train_state.batch_stats, batch)
  totals = np.asarray(jax.device_get(totals))
  expected = source.num_examples(data.eval_split)
  if totals[2] != expected:
    raise RuntimeError(f"Evaluated {totals[2]} examples of split '{data.eval_split}' but it "
                       f"has {expected}: examples were lost or duplicated.")
  return totals[0] / totals[2], totals[1] / totals[2], int(totals[2])


# ------------------------------------------------------------------------- the loop


def finetune(config, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the fine-tuning stage; returns and writes finetune.json."""
  # The settings and the data first: a problem with them is one line before any checkpoint
  # is read (the data fields are the given config's, never the checkpoint's).
  check_settings(config)
  input_pipeline.configure_tensorflow()
  full_source = input_pipeline.create_source(data_config(config), stage="finetune")
  config = model_lib.config_from_checkpoint(
      config, config.finetune.pretrain_workdir or workdir, config.finetune.checkpoint_step)
  check_head(config)
  config_text.write(config, workdir, "finetune")
  data = data_config(config)
  model_lib.check_model_config(data)  # The backbone at the fine-tuning image size.
  mesh = sharding.create_mesh()
  source = subsets.labelled_subset(full_source, data.train_split,
                                   config.finetune.label_fraction, config.seed)
  subsets.warn_if_batch_repeats(source, data.train_split, config.finetune.batch_size)
  step, model_item = _restore_pretrained(config, workdir, mesh)
  starts = {"": model_item}
  if config.finetune.random_init_baseline:
    starts["random_init_"] = model_lib.init_model(config, mesh)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0,
                                                collection="finetune")
  results: dict[str, Any] = {
      "method": config.method, "checkpoint_step": step, "dataset": data.dataset,
      "train_split": data.train_split, "eval_split": data.eval_split,
      "label_fraction": config.finetune.label_fraction,
      "num_labelled_examples": source.num_examples(data.train_split),
      "num_train_split_examples": full_source.num_examples(data.train_split),
      "num_eval_examples": source.num_examples(data.eval_split),
      "num_classes": source.num_classes}
  logging.info("Fine-tuning the %s encoder of pretraining step %d on %d labelled examples "
               "(%.3g of '%s' of %s).", config.method, step, results["num_labelled_examples"],
               config.finetune.label_fraction, data.train_split, data.dataset)
  for prefix, start in starts.items():
    directory = storage.path(workdir) / "finetune_checkpoints" / (prefix.rstrip("_") or
                                                                  "pretrained")
    run = _finetune_from(config, data, source, start, mesh, writer, prefix, directory)
    results.update({prefix + key: value for key, value in run.items()})
  writer.flush()
  summaries.write_json(workdir, "finetune.json", results)
  if jax.process_index() == 0:
    print(results_table(results))
  return results


def _restore_pretrained(config, workdir: str, mesh):
  """(checkpoint step, {'params', 'batch_stats'}) of the pretrained model that
  config.finetune names (its workdir, default --workdir; its step, default the newest)."""
  block = config.finetune
  modules = ("encoder", methods.get(config).projection_head)
  return model_lib.restore_model(config, block.pretrain_workdir or workdir, mesh,
                             step=block.checkpoint_step, modules=modules)


def training_length(config, num_labelled: int) -> tuple[int, int]:
  """(steps_per_epoch, num_steps): an epoch is ceil(labelled / batch) steps (at least one;
  a batch larger than a small labelled part repeats examples)."""
  steps_per_epoch = max(1, math.ceil(num_labelled / config.finetune.batch_size))
  return steps_per_epoch, steps_per_epoch * config.finetune.epochs


def resume_fields(config) -> tuple[str, ...]:
  """Config fields a resumed fine-tuning run must share with its checkpoint."""
  return (*model_lib.model_fields(config), "finetune.", "seed", "augment.")


def _finetune_from(config, data, source, model_item, mesh, writer, prefix: str,
                   directory) -> dict[str, Any]:
  """Fine-tunes from `model_item` (a pretrained or random-init model) with checkpoints in
  `directory`; returns the run's result fields (top1, top5, the evaluation-selected epoch,
  history)."""
  block = config.finetune
  num_classes = source.num_classes
  steps_per_epoch, num_steps = training_length(config, source.num_examples(data.train_split))
  schedule = optim.learning_rate_schedule(block.optimizer, block.batch_size, steps_per_epoch,
                                          num_steps)
  tx = optim.create_optimizer(block.optimizer, schedule, classifier_layers(config))
  abstract = nnx.eval_shape(lambda: build_classifier(config, num_classes, nnx.Rngs(0)))
  graphdef = nnx.split(abstract, nnx.Param, nnx.BatchStat)[0]
  variables = classifier_variables(config, num_classes, jax.device_get(model_item))
  train_state = jax.device_put(FinetuneState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
      history=jnp.full((block.epochs, 2), jnp.nan, jnp.float32)), replicated(mesh))
  update, evaluate_batch = compile_steps(config, graphdef, tx, schedule, num_classes, mesh)
  cadence = loop.Cadence(num_steps, block.log_every_steps, block.checkpoint_every_steps,
                         epoch_steps=steps_per_epoch)
  end_of_epoch = functools.partial(_evaluate_epoch, evaluate_batch=evaluate_batch, data=data,
                                   source=source, mesh=mesh, writer=writer, prefix=prefix,
                                   cadence=cadence, epochs=block.epochs)
  with checkpoints.create_manager(directory, max_to_keep=2) as manager:
    ckpt = loop.Checkpointing.single(manager, config, "finetune", resume_fields(config))
    train_state = loop.resume(ckpt, train_state, f"{prefix}fine-tuning")
    start = int(train_state.step)
    batches = input_pipeline.global_batches(
        input_pipeline.crop_flip_dataset(data, source, block.batch_size, start,
                                         stream=2).as_numpy_iterator(),
        batch_sharded(mesh))
    result = loop.run(update, train_state, batches, start_step=start, cadence=cadence,
                      ckpt=ckpt, writer=writer, diverged_advice=DIVERGED_ADVICE,
                      examples_per_step=block.batch_size, metric_prefix=prefix,
                      end_of_epoch=end_of_epoch,
                      label=f"{prefix.replace('_', ' ')}fine-tuning".capitalize(),
                      batch_field=device_memory.BatchField("finetune.batch_size",
                                                           block.batch_size))
    result.raise_if_stopped(f"{prefix}fine-tuning")
  return _run_results(np.asarray(jax.device_get(result.state.history)), steps_per_epoch,
                      num_steps)


def _run_results(history: np.ndarray, steps_per_epoch: int, num_steps: int) -> dict[str, Any]:
  """The last epoch's scores (the result), and the best epoch's, named for what they are:
  chosen on the evaluation split itself (Food-101's is its test set), so not a held-out
  score."""
  best = int(np.nanargmax(history[:, 0]))
  return {"top1": float(history[-1, 0]), "top5": float(history[-1, 1]),
          "eval_selected_epoch": best + 1, "eval_selected_top1": float(history[best, 0]),
          "history": [{"epoch": i + 1, "top1": float(t1), "top5": float(t5)}
                      for i, (t1, t5) in enumerate(history)],
          "steps_per_epoch": steps_per_epoch, "num_steps": num_steps}


def _evaluate_epoch(train_state: FinetuneState, step: int, *, evaluate_batch, data, source,
                    mesh, writer, prefix: str, cadence, epochs: int) -> FinetuneState:
  """The loop's `end_of_epoch`: top-1/top-5 on the evaluation split, recorded in the state's
  history and written; an epoch that has its result already (a resumed run) is skipped."""
  epoch = step // cadence.epoch_steps
  history = np.array(jax.device_get(train_state.history))
  if not np.isnan(history[epoch - 1, 0]):
    return train_state
  top1, top5, count = evaluate_split(evaluate_batch, train_state, data, source, mesh)
  history[epoch - 1] = (top1, top5)
  logging.info("%sfine-tuning epoch %d/%d: top-1 %.4f, top-5 %.4f on %d examples of '%s'.",
               prefix, epoch, epochs, top1, top5, count, data.eval_split)
  writer.write_scalars(step, {f"{prefix}top1": top1, f"{prefix}top5": top5,
                              f"{prefix}epoch": epoch})
  return train_state.replace(history=jax.device_put(history, replicated(mesh)))


def results_table(results: dict[str, Any]) -> str:
  """The fine-tuned accuracies as a small text table, pretrained beside random init."""
  rows = [(f"{results['method']} encoder", "")]
  if "random_init_top1" in results:
    rows.append(("random-init encoder", "random_init_"))
  lines = [f"Fine-tuned on {results['num_labelled_examples']} labelled examples "
           f"({100 * results['label_fraction']:g}% of '{results['train_split']}'), evaluated on "
           f"{results['num_eval_examples']} examples of '{results['eval_split']}':",
           f"  {'':22}{'top-1':>10}{'top-5':>10}{'best top-1*':>12}{'its epoch':>12}"]
  for name, prefix in rows:
    lines.append(f"  {name:22}{results[prefix + 'top1']:>10.3f}{results[prefix + 'top5']:>10.3f}"
                 f"{results[prefix + 'eval_selected_top1']:>12.3f}"
                 f"{results[prefix + 'eval_selected_epoch']:>12d}")
  lines.append(f"  * the best epoch on '{results['eval_split']}' itself: chosen on the "
               f"evaluation split, not a held-out score (top-1 is the last epoch's).")
  return "\n".join(lines)
