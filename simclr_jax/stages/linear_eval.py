"""The evaluation stage: linear probe, kNN and a t-SNE map on the frozen encoder.

Restores a pretraining checkpoint, drops the projection head and runs the encoder with
BatchNorm in inference mode. Features of both splits are computed with deterministic
preprocessing, every example exactly once (padded batches with a mask). A linear classifier
(SGD with momentum, Nesterov's or not, cosine decay) is trained either on randomly cropped
and flipped training images through the frozen encoder (each method's protocol:
configs/food101_linear.py) or on the precomputed features; top-1 / top-5 on the evaluation
split, beside weighted kNN on the same features.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers

from simclr_jax import config_checks, config_text, precision, sharding, storage
from simclr_jax.data import input_pipeline
from simclr_jax.evaluation import encoding, linear_probe, visualize
from simclr_jax.sharding import batch_sharded, replicated
from simclr_jax.training import checkpoints, device_memory, faults, loop, summaries
from simclr_jax.training import model as model_lib

DIVERGED_ADVICE = "Lower config.linear_eval.learning_rate, and check the labels."


def check_config(config) -> None:
  """ConfigError for a `config.linear_eval` that cannot work."""
  block, require = config.linear_eval, config_checks.require
  config_checks.check_batch_size("linear_eval.batch_size", block.batch_size)
  precision.check_compute_dtype(config)
  config_checks.check_positive_ints(block, ("checkpoint_every_steps", "log_every_steps",
                                            "epochs", "knn_k",
                                            "few_shot_trials"), "linear_eval.")
  require(block.lr_scaling in ("linear", "none"),
          f"linear_eval.lr_scaling must be 'linear' or 'none', got {block.lr_scaling!r}.")
  require(block.few_shot_per_class >= 0, "linear_eval.few_shot_per_class must be >= 0.")
  require(block.knn_temperature > 0, "linear_eval.knn_temperature must be > 0.")
  for name in ("weight_decay", "few_shot_weight_decay"):
    require(block[name] >= 0, f"linear_eval.{name} must be >= 0, got {block[name]}.")
  input_pipeline.check_config(config)


def classifier_fields(config) -> tuple[str, ...]:
  """Config fields a resumed classifier training must share with its checkpoint."""
  return (*model_lib.model_fields(config), "linear_eval.batch_size", "linear_eval.epochs",
          "linear_eval.learning_rate", "linear_eval.lr_scaling", "linear_eval.momentum",
          "linear_eval.nesterov", "linear_eval.weight_decay",
          "train_split", "augment.")


def train_linear_classifier_on_images(config, encode, encoder, mesh, source, num_features: int,
                                      checkpoint_dir, writer=None,
                                      prefix: str = "") -> dict[str, Any]:
  """The SimCLR protocol: every step encodes a fresh batch of randomly cropped and flipped
  training images with the frozen encoder (BatchNorm in inference mode) and updates only
  the linear classifier; epochs over the training split as `config.linear_eval.epochs`.

  Run by the host loop (`training.loop`): checkpointed in `checkpoint_dir` (local or gs://)
  every `config.linear_eval.checkpoint_every_steps` and resumed from there (the image stream
  resumes at the same position); a stop signal saves the step reached and raises
  `preemption.Preempted`; a non-finite step raises `faults.TrainingDivergedError`. Metrics go
  to `writer` (default: the log) as `<prefix>classifier_<name>`.

  Returns:
    {'kernel': (F, C), 'bias': (C,), 'mean': 0, 'std': 1} (features are not standardised).
  """
  le_config = config.linear_eval
  steps_per_epoch = max(1, source.num_examples(config.train_split) // le_config.batch_size)
  num_steps = le_config.epochs * steps_per_epoch
  tx, schedule = linear_probe.classifier_optimizer(
      linear_probe.peak_learning_rate(le_config), le_config.momentum, le_config.nesterov,
      le_config.weight_decay, num_steps)
  encoder_params, batch_stats = jax.device_put((encoder.params, encoder.batch_stats),
                                               replicated(mesh))

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(classifier, batch):
    features = encode(encoder_params, batch_stats, batch["image"])
    loss, _, params, opt_state, grad_norm = faults.guarded_update(
        lambda p: (linear_probe.softmax_loss(p, features, batch["label"]), None),
        classifier["params"], classifier["opt_state"], tx)
    fault = faults.fault_code(loss, grad_norm, params)
    new = {"params": params, "opt_state": opt_state, "step": classifier["step"] + 1}
    metrics = {"loss": loss, "grad_norm": grad_norm, "fault": fault,
               "learning_rate": schedule(classifier["step"])}
    return faults.apply_unless_faulty(fault, new, classifier), metrics

  params = {"kernel": jnp.zeros((num_features, source.num_classes)),
            "bias": jnp.zeros((source.num_classes,))}
  classifier = jax.device_put({"params": params, "opt_state": tx.init(params),
                               "step": jnp.zeros((), jnp.int32)}, replicated(mesh))
  with checkpoints.create_manager(checkpoint_dir, max_to_keep=1) as manager:
    ckpt = loop.Checkpointing.single(manager, config, "classifier", classifier_fields(config))
    classifier = loop.resume(ckpt, classifier, "the linear classifier")
    start = int(classifier["step"])
    batches = input_pipeline.global_batches(
        input_pipeline.linear_train_dataset(config, source, start).as_numpy_iterator(),
        batch_sharded(mesh))
    cadence = loop.Cadence(num_steps, le_config.log_every_steps,
                           le_config.checkpoint_every_steps)
    result = loop.run(step, classifier, batches, start_step=start, cadence=cadence, ckpt=ckpt,
                      writer=writer or metric_writers.LoggingWriter(),
                      diverged_advice=DIVERGED_ADVICE, examples_per_step=le_config.batch_size,
                      metric_prefix=f"{prefix}classifier_",
                      label=f"{prefix}linear classifier".replace("_", " ").capitalize(),
                      batch_field=device_memory.BatchField("linear_eval.batch_size",
                                                           le_config.batch_size))
    result.raise_if_stopped("The linear classifier's training")
  return {**jax.device_get(result.state["params"]), "mean": np.zeros(num_features, np.float32),
          "std": np.ones(num_features, np.float32)}


def evaluate(config, workdir: str) -> dict[str, Any]:
  """Runs the linear evaluation stage; returns and writes linear_eval.json."""
  check_config(config)
  input_pipeline.configure_tensorflow()
  # The data first: a problem with it is one line before any checkpoint is read (the data
  # fields are the given config's, never the checkpoint's).
  source = input_pipeline.create_source(config, stage="linear_eval")
  config = model_lib.config_from_checkpoint(
      config, config.linear_eval.pretrain_workdir or workdir, config.linear_eval.checkpoint_step)
  model_lib.check_model_config(config)
  config_text.write(config, workdir, "linear_eval")
  mesh = sharding.create_mesh()
  encode, step, encoders = _load_encoders(config, workdir, mesh, source)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0,
                                                collection="linear_eval")
  results: dict[str, Any] = {"method": config.method, "checkpoint_step": step}
  for prefix, encoder in encoders.items():
    train_x, train_y = encoding.split_features(config, encode, encoder, mesh, source,
                                               config.train_split)
    eval_x, eval_y = encoding.split_features(config, encode, encoder, mesh, source,
                                             config.eval_split)
    logging.info("%sfeatures: train %s, eval %s.", prefix or "pretrained ", train_x.shape,
                 eval_x.shape)
    classifier = None
    if not config.linear_eval.precompute_features:
      checkpoint_dir = (storage.path(workdir) / "linear_eval_checkpoints" /
                        (prefix.rstrip("_") or f"pretrained_step_{step}"))
      # Its own TensorBoard run: its steps are the classifier's, not pretraining's.
      classifier_writer = metric_writers.create_default_writer(
          workdir, just_logging=jax.process_index() > 0, collection="linear_classifier")
      classifier = train_linear_classifier_on_images(config, encode, encoder, mesh, source,
                                                     train_x.shape[1], checkpoint_dir,
                                                     classifier_writer, prefix)
    results.update(linear_probe.probe(train_x, train_y, eval_x, eval_y, source.num_classes,
                                      config.linear_eval, config.seed, prefix, classifier))
    results[f"{prefix}feature_rank"] = linear_probe.feature_rank(train_x)
    if not prefix and config.linear_eval.tsne_points and jax.process_index() == 0:
      picture = visualize.tsne_map(
          eval_x, eval_y, storage.path(workdir) / "tsne.png",
          f"t-SNE of {config.dataset} '{config.eval_split}' encoder features, step {step}",
          config.linear_eval.tsne_points, config.seed)
      writer.write_images(step, {"tsne": picture[None]})
  results.update(num_train_examples=len(train_y), num_eval_examples=len(eval_y),
                 num_features=int(train_x.shape[1]))
  writer.write_scalars(step, {k: v for k, v in results.items() if isinstance(v, float)})
  writer.flush()
  summaries.write_json(workdir, "linear_eval.json", results)
  if jax.process_index() == 0:
    print(results_table(results, config.linear_eval.few_shot_per_class))
  return results


def _load_encoders(config, workdir: str, mesh, source):
  """(encode, checkpoint step, {result prefix: EncoderState}) for the pretrained encoder
  chosen by config.linear_eval (and the random-init one when asked). Only the model item
  of the checkpoint is read (model_lib.restore_model)."""
  num_probe_classes = model_lib.probe_classes(config, source)
  encode = encoding.make_encoder(model_lib.model_graphdef(config, num_probe_classes),
                        config.augment.normalize)
  step, model = model_lib.restore_model(config, config.linear_eval.pretrain_workdir or workdir,
                                    mesh, num_probe_classes, config.linear_eval.checkpoint_step)
  logging.info("Linear evaluation of the encoder at pretraining step %d.", step)
  encoders = {"": encoding.EncoderState(**model)}
  if config.linear_eval.random_init_baseline:
    encoders["random_init_"] = encoding.EncoderState(
        **model_lib.init_model(config, mesh, num_probe_classes))
  return encode, step, encoders


def results_table(results: dict[str, Any], few_shot: int) -> str:
  """The probe accuracies as a small text table, pretrained beside random init."""
  columns = [("linear top-1", "top1"), ("linear top-5", "top5"), ("kNN top-1", "knn_top1")]
  if few_shot:
    columns += [(f"linear ({few_shot}/class)", f"top1_{few_shot}shot"),
                (f"kNN ({few_shot}/class)", f"knn_top1_{few_shot}shot")]
  rows = [(f"{results.get('method', 'pretrained')} encoder", "")]
  if "random_init_top1" in results:
    rows.append(("random-init encoder", "random_init_"))
  lines = [f"Linear probe on {results['num_eval_examples']} evaluation examples "
           f"(pretraining step {results['checkpoint_step']}):",
           f"  {'':22}" + "".join(f"{title:>18}" for title, _ in columns)]
  for name, prefix in rows:
    lines.append(f"  {name:22}" + "".join(f"{results[prefix + key]:>18.3f}"
                                          for _, key in columns))
  return "\n".join(lines)
