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

import contextlib
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers

from simclr_jax import (checkpoints, config_checks, encoding, knn, precision, preemption, state,
                        storage, summaries, visualize)
from simclr_jax.data import input_pipeline
from simclr_jax.sharding import batch_sharded, replicated


def check_config(config) -> None:
  """ConfigError for a `config.linear_eval` that cannot work."""
  block, require = config.linear_eval, config_checks.require
  config_checks.check_batch_size("linear_eval.batch_size", block.batch_size)
  precision.check_compute_dtype(config)
  config_checks.check_positive_ints(block, ("checkpoint_every_steps", "epochs", "knn_k",
                                            "few_shot_trials"), "linear_eval.")
  require(block.lr_scaling in ("linear", "none"),
          f"linear_eval.lr_scaling must be 'linear' or 'none', got {block.lr_scaling!r}.")
  require(block.few_shot_per_class >= 0, "linear_eval.few_shot_per_class must be >= 0.")
  require(block.knn_temperature > 0, "linear_eval.knn_temperature must be > 0.")
  for name in ("weight_decay", "few_shot_weight_decay"):
    require(block[name] >= 0, f"linear_eval.{name} must be >= 0, got {block[name]}.")


def classifier_fields(config) -> tuple[str, ...]:
  """Config fields a resumed classifier training must share with its checkpoint."""
  return (*state.model_fields(config), "linear_eval.batch_size", "linear_eval.epochs",
          "linear_eval.learning_rate", "linear_eval.lr_scaling", "linear_eval.momentum",
          "linear_eval.nesterov", "linear_eval.weight_decay",
          "train_split", "augment.")


def peak_learning_rate(le_config) -> float:
  """The classifier's learning rate after its batch-size rule (`lr_scaling`): 'linear',
  learning_rate x batch_size / 256; 'none', learning_rate."""
  if le_config.lr_scaling == "linear":
    return le_config.learning_rate * le_config.batch_size / 256
  return le_config.learning_rate  # 'none' (check_config allows no other).


def train_linear_classifier(features: np.ndarray, labels: np.ndarray, num_classes: int,
                            epochs: int, le_config, seed: int,
                            weight_decay: float | None = None) -> dict[str, Any]:
  """Softmax regression on (n, F) features with SGD (+ Nesterov) momentum, cosine decay.

  Features are standardised with the training mean and std (stored in the result) when
  `le_config.standardize_features`. Every epoch visits the examples in a fresh random order,
  n // batch minibatches (the remainder is left to the next epoch's draw, as a loader that
  drops the last partial batch). `weight_decay` defaults to `le_config.weight_decay`.

  Returns:
    {'kernel': (F, C), 'bias': (C,), 'mean': (F,), 'std': (F,)}.
  """
  mean, std = _feature_stats(features, le_config.standardize_features)
  params = _fit_softmax_regression(
      jnp.asarray((features - mean) / std), jnp.asarray(labels), jax.random.PRNGKey(seed),
      num_classes=num_classes, epochs=epochs, batch=min(le_config.batch_size, len(labels)),
      learning_rate=peak_learning_rate(le_config), momentum=le_config.momentum,
      nesterov=le_config.nesterov,
      weight_decay=le_config.weight_decay if weight_decay is None else weight_decay)
  return {**jax.device_get(params), "mean": mean, "std": std}


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch",
                                             "learning_rate", "momentum", "nesterov",
                                             "weight_decay"))
def _fit_softmax_regression(x, y, key, *, num_classes, epochs, batch, learning_rate,
                            momentum, nesterov, weight_decay):
  """(n, F) features, (n,) labels -> {'kernel': (F, C), 'bias': (C,)}, one compiled scan
  over epochs, each a permutation of the n examples (O(n log n) once an epoch, so a step
  costs O(batch), whatever n is) and a scan over its minibatches."""
  n, dim = x.shape
  tx = _classifier_optimizer(learning_rate, momentum, nesterov, weight_decay,
                             epochs * (n // batch))

  def step(carry, index):
    params, opt_state = carry
    grads = jax.grad(_softmax_loss)(params, x[index], y[index])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  def epoch(carry, key):
    return jax.lax.scan(step, carry, epoch_minibatches(key, n, batch))[0], None

  params = {"kernel": jnp.zeros((dim, num_classes)), "bias": jnp.zeros((num_classes,))}
  (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jax.random.split(key, epochs))
  return params


def epoch_minibatches(key, num_examples: int, batch: int) -> jax.Array:
  """(num_examples // batch, batch) indices: one epoch's minibatches, a random permutation
  of the examples without its last partial batch."""
  num_batches = num_examples // batch
  order = jax.random.permutation(key, num_examples)[:num_batches * batch]
  return order.reshape(num_batches, batch)


def _classifier_optimizer(learning_rate: float, momentum: float, nesterov: bool,
                          weight_decay: float, num_steps: int) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum, cosine decay to 0, weight decay on the kernel only."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask={"kernel": True, "bias": False}),
      optax.sgd(optax.cosine_decay_schedule(learning_rate, num_steps), momentum=momentum,
                nesterov=nesterov))


def _softmax_loss(params, features, labels):
  logits = features @ params["kernel"] + params["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_linear_classifier_on_images(config, encode, encoder, mesh, source, num_features: int,
                                      checkpoint_dir=None) -> dict[str, Any]:
  """The SimCLR protocol: every step encodes a fresh batch of randomly cropped and flipped
  training images with the frozen encoder (BatchNorm in inference mode) and updates only
  the linear classifier; epochs over the training split as `config.linear_eval.epochs`.

  With `checkpoint_dir` (local or gs://) the classifier is checkpointed every
  `config.linear_eval.checkpoint_every_steps` and resumed from there (the image stream
  resumes at the same position); a stop signal saves the step reached and raises
  `preemption.Preempted`.

  Returns:
    {'kernel': (F, C), 'bias': (C,), 'mean': 0, 'std': 1} (features are not standardised).
  """
  le_config = config.linear_eval
  steps_per_epoch = max(1, source.num_examples(config.train_split) // le_config.batch_size)
  num_steps = le_config.epochs * steps_per_epoch
  tx = _classifier_optimizer(peak_learning_rate(le_config), le_config.momentum,
                             le_config.nesterov, le_config.weight_decay, num_steps)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(classifier, encoder_params, batch_stats, images, labels):
    features = encode(encoder_params, batch_stats, images)
    grads = jax.grad(_softmax_loss)(classifier["params"], features, labels)
    updates, opt_state = tx.update(grads, classifier["opt_state"], classifier["params"])
    return {"params": optax.apply_updates(classifier["params"], updates),
            "opt_state": opt_state, "step": classifier["step"] + 1}

  params = {"kernel": jnp.zeros((num_features, source.num_classes)),
            "bias": jnp.zeros((source.num_classes,))}
  classifier = jax.device_put({"params": params, "opt_state": tx.init(params),
                               "step": jnp.zeros((), jnp.int32)}, replicated(mesh))
  encoder_params, batch_stats = jax.device_put((encoder.params, encoder.batch_stats),
                                               replicated(mesh))
  with contextlib.ExitStack() as stack:
    manager = None
    if checkpoint_dir is not None:
      manager = stack.enter_context(checkpoints.create_manager(checkpoint_dir, max_to_keep=1))
      classifier = _resume_classifier(manager, classifier, config, num_steps)
    start = int(classifier["step"])
    batches = input_pipeline.global_batches(
        input_pipeline.linear_train_dataset(config, source, start).as_numpy_iterator(),
        batch_sharded(mesh))
    for index, batch in zip(range(start + 1, num_steps + 1), batches):
      classifier = step(classifier, encoder_params, batch_stats, batch["image"], batch["label"])
      if index % 100 == 0 or index == num_steps:
        logging.info("Linear classifier on augmented images: step %d/%d.", index, num_steps)
      if manager is not None:
        _checkpoint_classifier(manager, index, classifier, config, index == num_steps)
  return {**jax.device_get(classifier["params"]), "mean": np.zeros(num_features, np.float32),
          "std": np.ones(num_features, np.float32)}


def _resume_classifier(manager, classifier, config, num_steps: int):
  """The newest readable classifier checkpoint, or `classifier` when there is none."""
  restored = checkpoints.restore(manager, {"classifier": classifier}, config,
                                 check_fields=classifier_fields(config), move_damaged=True)
  if restored is None:
    return classifier
  logging.info("Resuming the linear classifier from step %d of %d (%s).", restored[0],
               num_steps, manager.directory)
  return restored[1]["classifier"]


def _checkpoint_classifier(manager, step: int, classifier, config, last: bool) -> None:
  """Saves every `checkpoint_every_steps`, at the end and on a stop signal; after the last
  it waits for the save and raises `preemption.Preempted`."""
  stop = preemption.reached()
  if stop or last or step % config.linear_eval.checkpoint_every_steps == 0:
    checkpoints.save(manager, step, {"classifier": classifier}, config)
  if stop:
    manager.wait_until_finished()
    raise preemption.Preempted("The linear classifier's training", step,
                               str(storage.path(manager.directory) / str(step)))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Minibatches of `train_linear_classifier` in one epoch over `num_examples`."""
  return max(1, num_examples // min(batch_size, num_examples))


def _feature_stats(features: np.ndarray, standardize: bool):
  if not standardize:
    return np.zeros(features.shape[1], np.float32), np.ones(features.shape[1], np.float32)
  return features.mean(0), features.std(0) + 1e-6


def top_k_accuracy(classifier: dict[str, Any], features: np.ndarray, labels: np.ndarray,
                   k: int) -> float:
  """Fraction of examples whose label is among the k highest logits."""
  logits = ((features - classifier["mean"]) / classifier["std"]) @ classifier["kernel"]
  logits = logits + classifier["bias"]
  top = np.argsort(-logits, axis=1)[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=1)))


def few_shot_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Indices of `per_class` examples of every class, chosen reproducibly."""
  rng = np.random.default_rng(seed)
  chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class]
            for c in np.unique(labels)]
  return np.sort(np.concatenate(chosen))


def feature_rank(features: np.ndarray) -> float:
  """The effective number of principal components of (N, F) features: exp of the entropy
  of their variance shares (Roy and Vetterli's effective rank of the covariance), between 1
  (all variance along one direction: a collapsed encoder, whatever its loss says) and F.

  Centred, unlike RankMe (Garrido et al., 2023): ReLU features share a large mean, which
  would count as a direction of its own and hide a collapse.
  """
  features = np.asarray(features, np.float64)
  centred = features - features.mean(axis=0)
  variances = np.linalg.svd(centred, compute_uv=False) ** 2
  shares = variances / max(variances.sum(), 1e-30)
  shares = shares[shares > 0]
  return float(np.exp(-np.sum(shares * np.log(shares))))


def probe(train_features, train_labels, eval_features, eval_labels, num_classes: int,
          le_config, seed: int, prefix: str = "", classifier=None) -> dict[str, float]:
  """Linear top-1/top-5 and kNN top-1, with all labels and, if asked, k labels per class.

  `classifier`, if given, is the all-labels linear classifier (trained on augmented images);
  otherwise it is fitted on the precomputed `train_features`.
  """
  updates = le_config.epochs * steps_per_epoch(len(train_labels), le_config.batch_size)

  def measure(features, labels, trial_seed, classifier=None, weight_decay=None):
    if classifier is None:  # As many updates as the all-labels probe, whatever len(labels).
      epochs = -(-updates // steps_per_epoch(len(labels), le_config.batch_size))
      classifier = train_linear_classifier(features, labels, num_classes, epochs, le_config,
                                           trial_seed, weight_decay)
    return {"top1": top_k_accuracy(classifier, eval_features, eval_labels, 1),
            "top5": top_k_accuracy(classifier, eval_features, eval_labels, 5),
            "knn_top1": knn.knn_accuracy(features, labels, eval_features, eval_labels,
                                         num_classes, le_config.knn_k,
                                         le_config.knn_temperature)}

  results = {prefix + name: value
             for name, value in measure(train_features, train_labels, seed, classifier).items()}
  shots = le_config.few_shot_per_class
  if shots > 0:
    # Averaged over several draws of the labelled examples: one draw of 5 per class is
    # noisy. As many updates as the all-labels probe, so the small set is fitted fully.
    trials = []
    for trial in range(le_config.few_shot_trials):
      subset = few_shot_subset(train_labels, shots, seed + trial)
      trials.append(measure(train_features[subset], train_labels[subset], seed + trial,
                            weight_decay=le_config.few_shot_weight_decay))
    for name in trials[0]:
      results[f"{prefix}{name}_{shots}shot"] = float(np.mean([t[name] for t in trials]))
  return results


def evaluate(config, workdir: str) -> dict[str, Any]:
  """Runs the linear evaluation stage; returns and writes linear_eval.json."""
  check_config(config)
  state.check_model_config(config)
  input_pipeline.configure_tensorflow()
  mesh = state.create_mesh()
  source = input_pipeline.create_source(config)
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
      classifier = train_linear_classifier_on_images(config, encode, encoder, mesh, source,
                                                     train_x.shape[1], checkpoint_dir)
    results.update(probe(train_x, train_y, eval_x, eval_y, source.num_classes,
                         config.linear_eval, config.seed, prefix, classifier))
    results[f"{prefix}feature_rank"] = feature_rank(train_x)
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
  of the checkpoint is read (state.restore_model)."""
  num_probe_classes = state.probe_classes(config, source)
  encode = encoding.make_encoder(state.model_graphdef(config, num_probe_classes),
                        config.augment.normalize)
  step, model = state.restore_model(config, config.linear_eval.pretrain_workdir or workdir,
                                    mesh, num_probe_classes, config.linear_eval.checkpoint_step)
  logging.info("Linear evaluation of the encoder at pretraining step %d.", step)
  encoders = {"": encoding.EncoderState(**model)}
  if config.linear_eval.random_init_baseline:
    encoders["random_init_"] = encoding.EncoderState(
        **state.init_model(config, mesh, num_probe_classes))
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
