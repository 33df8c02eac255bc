"""The fine-tuning stage: the labelled fraction, the model it starts from, exact evaluation,
results, resumption after a stop signal, transfer to another dataset, config errors."""

import json
import logging
import runpy

import jax
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from simclr_jax import config_checks, precision, sharding
from simclr_jax.data import input_pipeline, sources, subsets
from simclr_jax.stages import finetune
from simclr_jax.training import checkpoints, preemption
from simclr_jax.training import model as model_lib
from tests.conftest import MOCK_EXAMPLES
from tests.support.helpers import tiny_food101_config, tiny_resnet_config, tiny_vit_method_config


def test_stratified_fraction_keeps_every_class_in_proportion_and_is_reproducible():
  labels = np.repeat(np.arange(5), [100, 40, 7, 1, 52])
  chosen = subsets.stratified_fraction(labels, 0.1, seed=3)
  counts = np.bincount(labels[chosen], minlength=5)
  np.testing.assert_array_equal(counts, [10, 4, 1, 1, 5])  # round(0.1 n), at least one.
  assert len(np.unique(chosen)) == len(chosen) and np.all(np.diff(chosen) > 0)
  np.testing.assert_array_equal(chosen, subsets.stratified_fraction(labels, 0.1, seed=3))
  assert not np.array_equal(chosen, subsets.stratified_fraction(labels, 0.1, seed=4))
  np.testing.assert_array_equal(subsets.stratified_fraction(labels, 1.0, 0),
                                np.arange(len(labels)))
  with pytest.raises(ValueError, match="label fraction"):
    subsets.stratified_fraction(labels, 0.0, 0)


def test_labelled_subset_reads_exactly_the_chosen_examples():
  digits = sources.DigitsSource()
  subset = subsets.labelled_subset(digits, "train", 0.1, seed=0)
  images, labels = digits.arrays("train")
  expected = subsets.stratified_fraction(labels, 0.1, 0)
  assert subset.num_examples("train") == len(expected) == 136
  assert subset.num_examples("test") == digits.num_examples("test")
  seen = list(subset.local_dataset("train", shuffle=True, seed=0).as_numpy_iterator())
  seen_images = np.stack([e["image"] for e in seen])
  # The same examples, each once (order aside): compare sorted image bytes with labels.
  key = lambda x, y: sorted(img.tobytes() + bytes([lab]) for img, lab in zip(x, y))
  assert key(seen_images, [e["label"] for e in seen]) == key(images[expected],
                                                             labels[expected])
  np.testing.assert_array_equal(subset.labels("train"), labels[expected])
  assert subsets.labelled_subset(digits, "train", 1.0, 0) is digits


@pytest.fixture(name="head_config")
def _head_config():
  config = tiny_food101_config()
  config.simclr.head_widths = (32, 32, 16)  # SimCLR v2's 3-layer head, BatchNorm on.
  config.finetune.batch_size = 16
  config.finetune.epochs = 2
  config.finetune.log_every_steps = 1
  return config


@pytest.fixture(scope="module", name="head_workdir")
def _head_workdir(tmp_path_factory):
  """One pretraining step of the tiny config with a 3-layer head, on mock food101."""
  from simclr_jax.stages import pretrain  # pylint: disable=g-import-not-at-top
  config = tiny_food101_config()
  config.simclr.head_widths = (32, 32, 16)
  workdir = tmp_path_factory.mktemp("pretrained_3_layer_head")
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    pretrain.pretrain(config, str(workdir))
  return str(workdir)


def test_the_classifier_starts_from_the_encoder_and_the_head_s_first_layer(head_config,
                                                                          head_workdir):
  head_config.finetune.from_head_layer = True
  mesh = sharding.create_mesh()
  _, model = model_lib.restore_model(head_config, head_workdir, mesh)
  model = jax.device_get(model)
  variables = finetune.classifier_variables(head_config, 7, model)
  params, stats = variables["params"], variables["batch_stats"]
  same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
  same(params["encoder"], model["params"]["encoder"])
  same(stats["encoder"], model["batch_stats"]["encoder"])
  same(params["head_linear"], model["params"]["head"]["linears"][0])
  same(params["head_norm"], model["params"]["head"]["norms"][0])
  same(stats["head_norm"], model["batch_stats"]["head"]["norms"][0])
  assert params["classifier"]["kernel"].shape == (32, 7)
  assert not np.any(params["classifier"]["kernel"])  # Zero-initialised logits layer.
  # It is what the classifier model computes with: features through the kept head layer.
  graphdef = nnx.split(finetune.build_classifier(head_config, 7, nnx.Rngs(0)), nnx.Param,
                       nnx.BatchStat)[0]
  images = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype(np.float32)
  classifier = nnx.merge(graphdef, params, stats)
  hidden = classifier.head_norm(classifier.head_linear(classifier.encoder(images, False)),
                                use_running_average=True)
  assert np.any(hidden != 0)
  np.testing.assert_array_equal(classifier(images, train=False), 0)  # Zero logits at first.


def test_evaluation_counts_every_example_once_with_a_padded_last_batch(head_config,
                                                                      head_workdir):
  """Top-1 / top-5 over the 21 mock examples in batches of 16 on 8 devices equal a direct
  computation over all of them at once."""
  mesh = sharding.create_mesh()
  num_classes = 101
  _, model = model_lib.restore_model(head_config, head_workdir, mesh)
  variables = finetune.classifier_variables(head_config, num_classes, jax.device_get(model))
  rng = np.random.default_rng(1)
  variables["params"]["classifier"]["kernel"] = rng.normal(
      size=variables["params"]["classifier"]["kernel"].shape).astype(np.float32)
  graphdef = nnx.split(finetune.build_classifier(head_config, num_classes, nnx.Rngs(0)),
                       nnx.Param, nnx.BatchStat)[0]
  train_state = finetune.FinetuneState(step=0, params=variables["params"],
                                       batch_stats=variables["batch_stats"], opt_state=None,
                                       history=None)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    source = input_pipeline.create_source(head_config)
    _, evaluate_batch = finetune.compile_steps(head_config, graphdef, None, None, num_classes,
                                               mesh)
    top1, top5, count = finetune.evaluate_split(evaluate_batch, train_state, head_config,
                                                source, mesh)
    everything = next(input_pipeline.eval_dataset(head_config, source, "validation",
                                                  64).as_numpy_iterator())
  assert count == MOCK_EXAMPLES
  images = everything["image"][everything["mask"]].astype(np.float32) / 255.0
  labels = everything["label"][everything["mask"]]
  if head_config.augment.normalize:
    images = (images - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  logits = np.asarray(nnx.merge(graphdef, variables["params"], variables["batch_stats"])(
      images.astype(np.float32), train=False))
  ranked = np.argsort(-logits, axis=1)
  assert top1 == pytest.approx(np.mean(ranked[:, 0] == labels))
  assert top5 == pytest.approx(np.mean(np.any(ranked[:, :5] == labels[:, None], axis=1)))


def _finetune(config, workdir):
  """Fine-tunes on the digits: tfds.testing.mock_data would redirect the file system while
  a dataset is opened, and with it the checkpoint writes in flight (as at each epoch's
  evaluation)."""
  config.finetune.update(dataset="digits", train_split="train", eval_split="test")
  return finetune.finetune(config, str(workdir))


def _from_head_with_2_percent(config, pretrain_workdir):
  """From the head's first layer, 2% of the digits' labels, with the random-init baseline."""
  config.finetune.update(pretrain_workdir=pretrain_workdir, from_head_layer=True,
                         label_fraction=0.02, random_init_baseline=True)
  config.finetune.optimizer.base_learning_rate = 0.5


def test_finetune_writes_its_results(head_config, head_workdir, tmp_path, caplog):
  """Also: from a config whose model differs from pretraining's (a one-layer head, which
  has no first layer to keep, another hidden width), the checkpoint's model is fine-tuned,
  the fields named, and the config it ran with written to workdir/config/finetune.py."""
  _from_head_with_2_percent(head_config, head_workdir)
  given = head_config.copy_and_resolve_references()
  given.model.hidden = 64
  given.simclr.head_widths = (16,)
  with caplog.at_level(logging.INFO):
    results = _finetune(given, tmp_path / "whole")
  assert ("model.hidden=32 (config: 64), simclr.head_widths=(32, 32, 16) (config: (16,))"
          in " ".join(r.getMessage() for r in caplog.records))
  written = runpy.run_path(str(tmp_path / "whole" / "config" / "finetune.py"))["get_config"]()
  given.model.hidden = 32
  given.simclr.head_widths = (32, 32, 16)
  assert written.to_dict() == given.to_dict()  # With _finetune's data fields.
  written = json.loads((tmp_path / "whole" / "finetune.json").read_text())
  assert written == pytest.approx(results)
  for key in ("top1", "top5", "random_init_top1", "random_init_top5", "eval_selected_epoch",
              "num_labelled_examples", "num_eval_examples", "label_fraction"):
    assert key in written
  assert written["num_eval_examples"] == 450  # The digits' test split.
  assert written["label_fraction"] == 0.02 and written["checkpoint_step"] == 1
  assert written["num_labelled_examples"] == 30  # round(0.02 * ~135) = 3 of each digit.
  assert written["steps_per_epoch"] == 2 and written["num_steps"] == 4
  assert [h["epoch"] for h in written["history"]] == [1, 2]
  assert written["top1"] == written["history"][-1]["top1"]
  # The pretrained and random-init encoders fine-tune to different models.
  assert written["history"] != written["random_init_history"]


@pytest.mark.slow  # 15 s: three more runs. The loop's resume is checked in the default suite
# on the classifier (tests/stages/linear_eval_test.py) and on pretraining (tests/training/).
def test_finetune_resumes_exactly_after_a_stop(head_config, head_workdir, tmp_path,
                                                monkeypatch):
  _from_head_with_2_percent(head_config, head_workdir)
  results = _finetune(head_config, tmp_path / "whole")

  # Stopped by a signal after the first step (mid-epoch), then resumed: the same history.
  calls = {"n": 0}

  def stop_after_first_step():
    calls["n"] += 1
    return calls["n"] == 1

  monkeypatch.setattr(preemption, "reached", stop_after_first_step)
  with pytest.raises(preemption.Preempted, match="fine-tuning stopped by a signal after step 1"):
    _finetune(head_config, tmp_path / "stopped")
  assert (tmp_path / "stopped" / "finetune_checkpoints" / "pretrained" / "1").exists()
  monkeypatch.setattr(preemption, "reached", lambda: False)
  resumed = _finetune(head_config, tmp_path / "stopped")
  np.testing.assert_allclose([h["top1"] for h in resumed["history"]],
                             [h["top1"] for h in results["history"]], rtol=0, atol=0)
  np.testing.assert_allclose([h["top5"] for h in resumed["random_init_history"]],
                             [h["top5"] for h in results["random_init_history"]], atol=0)
  # A finished run rerun trains nothing more and reports the same.
  again = _finetune(head_config, tmp_path / "stopped")
  assert again["history"] == resumed["history"]


def test_fine_tuning_on_another_dataset_uses_its_classes_splits_and_image_size(
    head_config, head_workdir, tmp_path):
  head_config.finetune.pretrain_workdir = head_workdir
  head_config.finetune.update(image_size=24, label_fraction=0.05, epochs=1, batch_size=32)
  results = _finetune(head_config, tmp_path)
  assert results["dataset"] == "digits" and results["num_classes"] == 10
  assert results["num_eval_examples"] == sources.DigitsSource().num_examples("test")
  labels = sources.DigitsSource().labels("train")
  assert results["num_labelled_examples"] == len(subsets.stratified_fraction(labels, 0.05, 0))
  assert results["steps_per_epoch"] == 3  # ceil(68 / 32).
  assert finetune.data_config(head_config).augment.image_size == 24


@pytest.mark.parametrize("field,value,message", [
    ("label_fraction", 0.0, "label_fraction must be in"),
    ("label_fraction", 1.5, "label_fraction must be in"),
    ("epochs", 0, "finetune.epochs must be > 0"),
    ("label_smoothing", 1.0, "label_smoothing"),
    ("batch_size", 12, "does not divide across 8 devices"),
])
def test_bad_finetune_settings_are_config_errors_before_any_checkpoint_is_read(
    field, value, message, tmp_path):
  config = tiny_food101_config()
  config.finetune[field] = value
  with pytest.raises(config_checks.ConfigError, match=message):
    finetune.check_config(config)
  with pytest.raises(config_checks.ConfigError, match=message):  # Not "no checkpoint".
    finetune.finetune(config, str(tmp_path))


def test_keeping_the_head_layer_needs_a_head_of_two_layers():
  config = tiny_food101_config()
  config.simclr.head_widths = (16,)
  config.finetune.from_head_layer = True
  with pytest.raises(config_checks.ConfigError, match="at least two layers"):
    finetune.check_config(config)


def test_without_a_pretraining_checkpoint_it_says_so(tmp_path):
  with pytest.raises(checkpoints.NoCheckpointError, match="No pretraining checkpoint"):
    _finetune(tiny_food101_config(), tmp_path)
  assert not (tmp_path / "finetune.json").exists()


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_the_update_s_loss_is_smoothed_cross_entropy_of_the_model_s_logits(head_config,
                                                                           smoothing):
  """The compiled step's loss against NumPy's smoothed cross entropy of the same logits
  (BatchNorm in training mode: statistics of this batch), on 8 devices."""
  head_config.finetune.label_smoothing = smoothing
  num_classes, mesh = 5, sharding.create_mesh()
  classifier = finetune.build_classifier(head_config, num_classes, nnx.Rngs(0))
  graphdef, params, stats = nnx.split(classifier, nnx.Param, nnx.BatchStat)
  params, stats = nnx.to_pure_dict(params), nnx.to_pure_dict(stats)
  rng = np.random.default_rng(2)
  params["classifier"]["kernel"] = rng.normal(
      size=params["classifier"]["kernel"].shape).astype(np.float32)
  tx = optax.sgd(0.0)
  train_state = finetune.FinetuneState(step=np.int32(0), params=params, batch_stats=stats,
                                       opt_state=tx.init(params), history=np.zeros((1, 2)))
  update, _ = finetune.compile_steps(head_config, graphdef, tx, lambda step: 0.0, num_classes,
                                     mesh)
  images = rng.integers(0, 256, (16, 16, 16, 3), np.uint8)
  labels = rng.integers(0, num_classes, 16).astype(np.int32)
  model_input = precision.to_model_input(images, head_config.augment.normalize)
  logits = np.asarray(nnx.merge(graphdef, params, stats)(model_input, train=True), np.float64)
  _, metrics = update(jax.device_put(train_state, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec())), {"image": images, "label": labels})
  targets = np.eye(num_classes)[labels] * (1 - smoothing) + smoothing / num_classes
  log_probs = logits - logits.max(1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
  assert float(metrics["loss"]) == pytest.approx(-(targets * log_probs).sum(1).mean(),
                                                 rel=1e-5)


def test_a_vit_s_fine_tuning_step_runs_drop_path_from_the_seed_and_the_step():
  """model.vit.drop_path_rate 0.5: the step's loss is the cross entropy of the logits with
  drop-path drawn from fold_in(fold_in(key(seed), stream 2), step), computed outside the
  step; the same when repeated (a resumed run), another at another step, and not that of
  the logits without drop-path."""
  config = tiny_vit_method_config("simclr", 0.5)
  num_classes, mesh = 5, sharding.create_mesh()
  graphdef, params, stats = nnx.split(
      finetune.build_classifier(config, num_classes, nnx.Rngs(0)), nnx.Param, nnx.BatchStat)
  # On the host: the step donates its state, which must not take these buffers.
  params, stats = jax.device_get((nnx.to_pure_dict(params), nnx.to_pure_dict(stats)))
  rng = np.random.default_rng(3)
  params["classifier"]["kernel"] = rng.normal(  # Zero logits would not see drop-path.
      size=params["classifier"]["kernel"].shape).astype(np.float32)
  tx = optax.sgd(0.0)
  update, _ = finetune.compile_steps(config, graphdef, tx, lambda step: 0.0, num_classes, mesh)
  images = rng.integers(0, 256, (16, 8, 8, 3), np.uint8)
  labels = rng.integers(0, num_classes, 16).astype(np.int32)

  def loss_at(step):
    train_state = finetune.FinetuneState(step=np.int32(step), params=params, batch_stats=stats,
                                         opt_state=tx.init(params), history=np.zeros((1, 2)))
    _, metrics = update(jax.device_put(train_state, sharding.replicated(mesh)),
                        {"image": images, "label": labels})
    return float(metrics["loss"])

  losses = [loss_at(0), loss_at(0), loss_at(4)]
  base_key = jax.random.fold_in(jax.random.key(config.seed), 2)
  keys = (None, jax.random.fold_in(base_key, 0), jax.random.fold_in(base_key, 4))

  @jax.jit
  def all_logits(model_input):
    model = nnx.merge(graphdef, params, stats)
    return [model(model_input, train=True, rngs=None if key is None else nnx.Rngs(dropout=key))
            for key in keys]

  logits = [np.asarray(x, np.float64) for x in all_logits(
      precision.to_model_input(images, config.augment.normalize))]
  expected = []
  for value in logits:
    log_probs = value - value.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    expected.append(-log_probs[np.arange(16), labels].mean())
  np.testing.assert_allclose(losses, [expected[1], expected[1], expected[2]], rtol=1e-5)
  assert losses[0] == losses[1]
  # Drop-path moves the loss by percents here; float sums by 1e-6.
  for other in (expected[0], losses[2]):
    assert abs(other - losses[0]) > 1e-3 * losses[0], (losses, expected)


def test_a_fine_tuning_image_size_too_small_for_the_backbone_is_a_config_error(tmp_path):
  """The backbone checked is the checkpoint's (a ResNet, whose small-image stem downsamples
  by 8), not the given config's (the toy one takes any size)."""
  pretrained = tiny_resnet_config()
  with checkpoints.create_manager(checkpoints.checkpoint_dir(tmp_path)) as manager:
    checkpoints.save(manager, 1, {"model": model_lib.init_model(
        pretrained, sharding.create_mesh())}, pretrained)
    manager.wait_until_finished()
  config = tiny_food101_config()
  config.finetune.image_size = 4
  with pytest.raises(config_checks.ConfigError, match="augment.image_size=4 is too small"):
    _finetune(config, tmp_path)


def test_an_unlabelled_folder_stops_fine_tuning_before_any_checkpoint_is_read(tmp_path):
  """#12 (was a ZeroDivisionError after 43 s of training): one line, first."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  (tmp_path / "flat").mkdir()
  for i in range(3):
    (tmp_path / "flat" / f"{i}.png").write_bytes(
        tf.io.encode_png(np.full((8, 8, 3), i, np.uint8)).numpy())
  config = tiny_food101_config()
  config.finetune.update(dataset="folder", data_dir=str(tmp_path / "flat"))
  with pytest.raises(sources.DatasetNotFoundError,
                     match=r"^finetune needs labels, but data_dir .*flat has no class folders "
                           r"\(3 images directly in it\)"):
    finetune.finetune(config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()
