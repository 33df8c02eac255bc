"""Linear evaluation: exact counts, frozen encoder, probe numerics, the stage on mock data."""

import json
import logging
import runpy
import shutil

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from simclr_jax import sharding
from simclr_jax.evaluation import encoding, linear_probe
from simclr_jax.stages import linear_eval, pretrain
from simclr_jax.training import checkpoints
from simclr_jax.training import model as model_lib
from simclr_jax.training import state as state_lib
from tests.conftest import MOCK_EXAMPLES
from tests.support import toy_backbone
from tests.support.helpers import ArraySource, tiny_food101_config


def test_linear_eval_stage_on_mock_food101(pretrained_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(pretrained_workdir, workdir)
  config = tiny_food101_config()
  config.linear_eval.few_shot_per_class = 1
  config.linear_eval.few_shot_trials = 2
  config.linear_eval.random_init_baseline = True
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    results = linear_eval.evaluate(config, str(workdir))

  assert json.loads((workdir / "linear_eval.json").read_text()) == results
  assert (workdir / "tsne.png").stat().st_size > 1000
  # Every example counted once, though 21 divides neither the batch nor the 8 devices.
  assert results["num_eval_examples"] == MOCK_EXAMPLES
  assert results["num_train_examples"] == MOCK_EXAMPLES
  assert results["checkpoint_step"] == 1
  assert results["num_features"] == toy_backbone.FEATURES  # The head is dropped.
  for key in ("top1", "top5", "knn_top1", "top1_1shot", "knn_top1_1shot", "random_init_top1",
              "random_init_top1_1shot", "random_init_knn_top1"):
    assert 0.0 <= results[key] <= 1.0
  assert results["top5"] >= results["top1"]
  assert 1.0 <= results["feature_rank"] <= 21 and 1.0 <= results["random_init_feature_rank"] <= 21


def test_linear_eval_without_checkpoint_says_what_to_do(tmp_path):
  with tfds.testing.mock_data(num_examples=21):
    with pytest.raises(checkpoints.NoCheckpointError, match="No pretraining checkpoint"):
      linear_eval.evaluate(tiny_food101_config(), str(tmp_path))


def test_features_count_every_example_once_and_leave_encoder_untouched():
  """37 digits-like examples over 8 devices with batch 16: 3 batches, the last padded."""
  config = tiny_food101_config()
  mesh = sharding.create_mesh()
  tx, _ = state_lib.create_optimizer(config, 1, 1)
  state = state_lib.init_train_state(config, tx, mesh)
  before = jax.device_get(state)
  images = np.random.default_rng(0).integers(0, 255, (37, 20, 24, 3), dtype=np.uint8)
  labels = np.arange(37, dtype=np.int32) % 101
  source = ArraySource(images, labels)

  encode = encoding.make_encoder(model_lib.model_graphdef(config), config.augment.normalize)
  features, seen_labels = encoding.split_features(config, encode, state, mesh, source, "x")

  assert features.shape == (37, toy_backbone.FEATURES)
  np.testing.assert_array_equal(np.sort(seen_labels), np.sort(labels))
  after = jax.device_get(state)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)  # Bit-identical: BatchNorm in inference mode.
  # Padding did not change the features of real examples: batch-of-one reference.
  single, _ = encoding.split_features(config, encode, state, mesh,
                                         ArraySource(images[:1], labels[:1]), "x")
  np.testing.assert_allclose(features[np.flatnonzero(seen_labels == 0)[0]], single[0],
                             rtol=1e-5, atol=1e-5)


def test_lost_examples_are_an_error_not_a_smaller_denominator():
  config = tiny_food101_config()
  mesh = sharding.create_mesh()
  tx, _ = state_lib.create_optimizer(config, 1, 1)
  state = state_lib.init_train_state(config, tx, mesh)
  images = np.zeros((5, 8, 8, 3), np.uint8)
  source = ArraySource(images, np.arange(5, dtype=np.int32))
  source.num_examples = lambda split: 6  # The split claims one more than the pipeline yields.
  with pytest.raises(RuntimeError, match="Encoded 5 examples of split 'x' but it has 6"):
    encode = encoding.make_encoder(model_lib.model_graphdef(config), config.augment.normalize)
    encoding.split_features(config, encode, state, mesh, source, "x")


def test_linear_classifier_fits_separable_data_and_topk_is_exact():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(5, 8)) * 4
  labels = rng.integers(0, 5, 200).astype(np.int32)
  features = (centers[labels] + rng.normal(size=(200, 8))).astype(np.float32)
  le_config = ml_collections.ConfigDict(dict(
      batch_size=32, learning_rate=0.1, lr_scaling="none", momentum=0.9, nesterov=True,
      weight_decay=0.0, standardize_features=True))
  classifier = linear_probe.train_linear_classifier(features, labels, 5, 50, le_config, 0)
  assert linear_probe.top_k_accuracy(classifier, features, labels, 1) > 0.97
  # An explicit weight decay (the few-shot probe's) overrides the config's and shrinks
  # the kernel; the run is otherwise the same.
  decayed = linear_probe.train_linear_classifier(features, labels, 5, 50, le_config, 0,
                                                weight_decay=0.1)
  assert np.linalg.norm(decayed["kernel"]) < 0.5 * np.linalg.norm(classifier["kernel"])
  np.testing.assert_array_equal(
      linear_probe.train_linear_classifier(features, labels, 5, 50, le_config, 0,
                                          weight_decay=0.0)["kernel"], classifier["kernel"])

  # top-k against a direct NumPy count on hand-made logits.
  manual = {"kernel": np.eye(3, dtype=np.float32), "bias": np.zeros(3, np.float32),
            "mean": np.zeros(3, np.float32), "std": np.ones(3, np.float32)}
  x = np.array([[3, 2, 1], [1, 3, 2], [2, 1, 3], [3, 1, 2]], np.float32)
  y = np.array([0, 2, 1, 1])
  assert linear_probe.top_k_accuracy(manual, x, y, 1) == 0.25
  assert linear_probe.top_k_accuracy(manual, x, y, 2) == 0.5
  assert linear_probe.top_k_accuracy(manual, x, y, 3) == 1.0


@pytest.mark.parametrize("nesterov, lr_scaling", [(True, "linear"), (False, "none")])
def test_linear_classifier_follows_the_protocol_s_sgd_against_numpy(nesterov, lr_scaling):
  """Full-batch steps against a NumPy softmax regression with PyTorch's SGD momentum
  (v = m v + g; Nesterov steps along g + m v), cosine decay from the rate after its batch
  rule (x 64 / 256 for 'linear'), weight decay on the kernel only."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 6)).astype(np.float32)
  y = rng.integers(0, 3, 64).astype(np.int32)
  le_config = ml_collections.ConfigDict(dict(
      batch_size=64, learning_rate=0.8, lr_scaling=lr_scaling, momentum=0.9,
      nesterov=nesterov, weight_decay=0.01, standardize_features=False))
  steps = 12
  result = linear_probe.train_linear_classifier(x, y, 3, steps, le_config, 0)

  peak = 0.8 * (64 / 256 if lr_scaling == "linear" else 1.0)
  w, b = np.zeros((6, 3)), np.zeros(3)
  vw, vb = np.zeros_like(w), np.zeros_like(b)
  for t in range(steps):
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(64), y] -= 1
    gw, gb = x.T @ p / 64 + 0.01 * w, p.mean(0)
    vw, vb = 0.9 * vw + gw, 0.9 * vb + gb
    lr = peak * 0.5 * (1 + np.cos(np.pi * t / steps))
    w -= lr * (gw + 0.9 * vw if nesterov else vw)
    b -= lr * (gb + 0.9 * vb if nesterov else vb)
  np.testing.assert_allclose(result["kernel"], w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(result["bias"], b, rtol=1e-4, atol=1e-6)


def test_feature_rank_counts_the_directions_the_features_vary_in():
  """Centred features with known singular values: k equal ones give k; (3, 1) gives
  exp(H(0.9, 0.1)) = 1.384 (variance shares 9:1); a shared offset (the mean) changes
  nothing."""
  rng = np.random.default_rng(0)
  noise = rng.normal(size=(200, 16))
  left = np.linalg.qr(noise - noise.mean(axis=0))[0]  # Orthonormal, mean-zero columns.
  right = np.linalg.qr(rng.normal(size=(16, 16)))[0]

  def with_singular_values(values):
    padded = np.zeros(16)
    padded[:len(values)] = values
    return left @ np.diag(padded) @ right + 5.0  # Plus a mean, as ReLU features have.

  for k in (1, 4, 16):
    assert linear_probe.feature_rank(with_singular_values([2.0] * k)) == pytest.approx(k, rel=1e-6)
  entropy = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
  assert linear_probe.feature_rank(with_singular_values([3.0, 1.0])) == pytest.approx(
      np.exp(entropy), rel=1e-6)


def test_few_shot_subset_takes_k_per_class_reproducibly():
  labels = np.repeat(np.arange(4), [10, 7, 5, 9])
  subset = linear_probe.few_shot_subset(labels, 3, seed=1)
  np.testing.assert_array_equal(np.bincount(labels[subset]), [3, 3, 3, 3])
  np.testing.assert_array_equal(subset, linear_probe.few_shot_subset(labels, 3, seed=1))
  assert not np.array_equal(subset, linear_probe.few_shot_subset(labels, 3, seed=2))


def test_a_chosen_checkpoint_step_is_evaluated_or_reported_missing(pretrained_workdir,
                                                                   tmp_path):
  config = tiny_food101_config()
  config.linear_eval.pretrain_workdir = str(pretrained_workdir)
  config.linear_eval.checkpoint_step = 7
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    with pytest.raises(checkpoints.NoCheckpointError, match=r"at step 7 .*has steps \[1\]"):
      linear_eval.evaluate(config, str(tmp_path))
    config.linear_eval.checkpoint_step = 1
    config.linear_eval.tsne_points = 0
    results = linear_eval.evaluate(config, str(tmp_path))
  assert results["checkpoint_step"] == 1
  assert (tmp_path / "linear_eval.json").exists() and not (tmp_path / "tsne.png").exists()


def test_evaluation_takes_the_model_and_its_input_from_the_checkpoint(pretrained_workdir,
                                                                       tmp_path, caplog):
  """A config whose model differs from pretraining's (hidden width, head, image size, normalised
  input where the encoder was pretrained on raw [0, 1] pixels, food101's paper details)
  evaluates the checkpoint's model as it was pretrained, names the fields, and writes the
  config it ran with to workdir/config/linear_eval.py."""
  config = tiny_food101_config()
  config.model.hidden = 2 * toy_backbone.HIDDEN
  config.simclr.head_widths = (64, 16)
  config.augment.normalize = True
  pretrained_size = config.augment.image_size
  config.augment.image_size = 2 * pretrained_size
  config.linear_eval.update(pretrain_workdir=str(pretrained_workdir), tsne_points=0,
                            precompute_features=True)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES), caplog.at_level(logging.INFO):
    results = linear_eval.evaluate(config, str(tmp_path))
  assert results["num_features"] == toy_backbone.FEATURES and results["checkpoint_step"] == 1
  logged = " ".join(r.getMessage() for r in caplog.records)
  assert ("model.hidden=32 (config: 64), simclr.head_widths=(32, 16) (config: (64, 16))"
          in logged and "augment.normalize=False (config: True)" in logged)
  assert (f"augment.image_size={pretrained_size} (config: {2 * pretrained_size})" in logged)
  written = runpy.run_path(str(tmp_path / "config" / "linear_eval.py"))["get_config"]()
  expected = tiny_food101_config()
  expected.linear_eval.update(pretrain_workdir=str(pretrained_workdir), tsne_points=0,
                              precompute_features=True)
  assert written.to_dict() == expected.to_dict()


def test_food101_linear_config_carries_the_protocol():
  """SimCLR's (the default); every method's: tests/official_recipes_test.py."""
  from configs import food101_linear  # pylint: disable=g-import-not-at-top
  config = food101_linear.get_config()
  assert (config.train_split, config.eval_split) == ("train", "validation")
  assert config.model.depth == 50 and config.linear_eval.epochs == 90
  assert linear_probe.peak_learning_rate(config.linear_eval) == pytest.approx(0.4)


def test_classifier_on_augmented_images_learns_and_leaves_the_encoder_frozen(tmp_path):
  """Two easy classes (dark vs bright images) through a random encoder, SimCLR protocol."""
  config = tiny_food101_config()
  config.augment.normalize = False
  config.linear_eval.epochs = 8
  config.linear_eval.learning_rate = 0.5
  mesh = sharding.create_mesh()
  tx, _ = state_lib.create_optimizer(config, 1, 1)
  state = state_lib.init_train_state(config, tx, mesh)
  before = jax.device_get(state)
  rng = np.random.default_rng(0)
  labels = np.arange(64, dtype=np.int32) % 2
  images = (rng.integers(0, 60, (64, 20, 20, 3)) + 190 * labels[:, None, None, None])
  source = ArraySource(images.astype(np.uint8), labels)
  source.num_classes = 2
  encode = encoding.make_encoder(model_lib.model_graphdef(config), config.augment.normalize)

  classifier = linear_eval.train_linear_classifier_on_images(config, encode, state, mesh,
                                                             source, toy_backbone.FEATURES,
                                                             tmp_path / "ckpt")
  features, seen = encoding.split_features(config, encode, state, mesh, source, "x")
  assert linear_probe.top_k_accuracy(classifier, features, seen, 1) >= 0.9
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state))):
    np.testing.assert_array_equal(a, b)


def test_an_sgd_pretrained_checkpoint_evaluates_under_the_lars_protocol(tmp_path):
  """Evaluation restores the model alone: the pretraining optimiser (SGD, as the seed
  config) does not have to match the evaluation config's (LARS, as food101_linear)."""
  sgd = tiny_food101_config()
  sgd.optimizer.update(name="sgd", base_learning_rate=0.03, lr_scaling="none",
                       weight_decay=1e-4, exclude_bn_and_bias=False, warmup_epochs=0.0)
  lars = tiny_food101_config()
  assert lars.optimizer.name == "lars"
  lars.linear_eval.tsne_points = 0
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    pretrain.pretrain(sgd, str(tmp_path))
    results = linear_eval.evaluate(lars, str(tmp_path))
  assert results["checkpoint_step"] == 1 and results["num_eval_examples"] == MOCK_EXAMPLES


def _classifier_run(config, state, mesh, source, checkpoint_dir):
  encode = encoding.make_encoder(model_lib.model_graphdef(config), config.augment.normalize)
  return linear_eval.train_linear_classifier_on_images(config, encode, state, mesh, source,
                                                       toy_backbone.FEATURES,
                                                       checkpoint_dir)


def test_classifier_training_stops_on_a_signal_and_resumes_exactly(tmp_path, monkeypatch):
  """A stop agreed after step 3 of 8 saves step 3 and raises Preempted; the rerun resumes
  there (the image stream too) and ends with the classifier of an uninterrupted run."""
  from simclr_jax.training import preemption  # pylint: disable=g-import-not-at-top
  config = tiny_food101_config()
  config.linear_eval.epochs = 4  # 64 images, batch 16: 4 steps an epoch, 16 in all.
  config.linear_eval.checkpoint_every_steps = 5
  mesh = sharding.create_mesh()
  tx, _ = state_lib.create_optimizer(config, 1, 1)
  state = state_lib.init_train_state(config, tx, mesh)
  rng = np.random.default_rng(0)
  source = ArraySource(rng.integers(0, 255, (64, 20, 20, 3), dtype=np.uint8),
                       np.arange(64, dtype=np.int32) % 2)
  source.num_classes = 2

  straight = _classifier_run(config, state, mesh, source, tmp_path / "straight")
  calls = iter(range(1, 100))
  monkeypatch.setattr(preemption, "reached", lambda: next(calls) == 7)
  with pytest.raises(preemption.Preempted, match="after step 7"):
    _classifier_run(config, state, mesh, source, tmp_path / "stopped")
  assert sorted(p.name for p in (tmp_path / "stopped").iterdir()) == ["7"]  # max_to_keep 1.
  monkeypatch.setattr(preemption, "reached", lambda: False)
  resumed = _classifier_run(config, state, mesh, source, tmp_path / "stopped")
  assert sorted(p.name for p in (tmp_path / "stopped").iterdir()) == ["16"]
  for key in ("kernel", "bias"):
    assert np.abs(straight[key]).max() > 0  # It learned: the comparison can fail.
    np.testing.assert_array_equal(resumed[key], straight[key])


def test_each_epoch_of_the_probe_visits_examples_once_in_a_fresh_order():
  """The probe's minibatches (a permutation an epoch, not a sample per step): 10 examples in
  batches of 3 give 3 disjoint batches; another epoch's key gives another order."""
  first = np.asarray(linear_probe.epoch_minibatches(jax.random.PRNGKey(0), 10, 3))
  second = np.asarray(linear_probe.epoch_minibatches(jax.random.PRNGKey(1), 10, 3))
  assert first.shape == second.shape == (3, 3)
  assert len(set(first.ravel())) == 9 and set(first.ravel()) <= set(range(10))
  assert not np.array_equal(first, second)
  full = np.asarray(linear_probe.epoch_minibatches(jax.random.PRNGKey(2), 12, 4))
  np.testing.assert_array_equal(np.sort(full.ravel()), np.arange(12))


def test_few_shot_probe_makes_as_many_updates_as_the_all_labels_probe(monkeypatch):
  """1,000 examples in batches of 256 are 3 steps an epoch, 30 in 10 epochs; a 5-per-class
  subset (20 examples, 1 minibatch an epoch) gets 30 epochs, so it is fitted as fully."""
  calls = []
  real = linear_probe.train_linear_classifier

  def recording(features, labels, num_classes, epochs, *args, **kwargs):
    calls.append((len(labels), epochs))
    return real(features, labels, num_classes, epochs, *args, **kwargs)

  monkeypatch.setattr(linear_probe, "train_linear_classifier", recording)
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4, dtype=np.int32), 250)
  features = rng.normal(size=(1000, 3)).astype(np.float32)
  le_config = ml_collections.ConfigDict(dict(
      batch_size=256, epochs=10, learning_rate=0.1, lr_scaling="none", momentum=0.9,
      nesterov=True, weight_decay=0.0, standardize_features=True, few_shot_per_class=5,
      few_shot_trials=2, few_shot_weight_decay=0.0, knn_k=5, knn_temperature=0.07))
  linear_probe.probe(features, labels, features[:8], labels[:8], 4, le_config, seed=0)
  assert calls == [(1000, 10), (20, 30), (20, 30)]


def _flat_folder(root, count=3):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  root.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    (root / f"{i}.png").write_bytes(tf.io.encode_png(np.full((8, 8, 3), i, np.uint8)).numpy())


def test_an_unlabelled_folder_stops_the_stage_in_one_line_before_any_checkpoint_is_read(
    tmp_path, monkeypatch):
  """#11 (was an argmax of an empty sequence in kNN): the data is checked before the
  checkpoint (there is none here: that error would come first otherwise) or any compile;
  runtime.run prints it as one `Error:` line."""
  from simclr_jax import runtime  # pylint: disable=g-import-not-at-top
  _flat_folder(tmp_path / "flat")
  config = tiny_food101_config(dataset="folder", data_dir=str(tmp_path / "flat"))
  monkeypatch.setenv("SIMCLR_NO_DISTRIBUTED", "1")
  with pytest.raises(SystemExit) as raised:
    runtime.run(config, str(tmp_path / "work"), "linear_eval")
  assert str(raised.value) == (
      f"Error: linear_eval needs labels, but data_dir {tmp_path / 'flat'} has no class "
      f"folders (3 images directly in it): put each class in its own folder "
      f"({tmp_path / 'flat'}/<class>/*.jpg).")
