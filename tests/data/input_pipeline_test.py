"""Input pipeline: two-view batches, reproducibility, exact padded evaluation, sources."""


import numpy as np
import tensorflow_datasets as tfds

from configs import demo, food101_seed
from simclr_jax import precision, sharding
from simclr_jax.data import input_pipeline, sources
from simclr_jax.data.augmentations import settings
from tests.support.helpers import ArraySource, tiny_food101_config


def _first_batches(config, source, count, start_step=0):
  ds = input_pipeline.pretrain_dataset(config, source, start_step)
  return [batch["views"] for batch in ds.take(count).as_numpy_iterator()]


def test_pretrain_batches_have_two_different_views_and_replay_from_the_seed():
  config = demo.get_config()
  config.batch_size = 32
  source = sources.DigitsSource()
  first, second = _first_batches(config, source, 2)
  assert first.shape == (32, 2, 16, 16, 3) and first.dtype == np.uint8
  # The two views of one image differ; the same config replays the same stream.
  assert np.mean(np.abs(first[:, 0].astype(float) - first[:, 1])) > 0.05 * 255
  np.testing.assert_array_equal(first, _first_batches(config, source, 1)[0])
  # Resuming at step 1 starts with what was the second batch.
  np.testing.assert_array_equal(second, _first_batches(config, source, 1, start_step=1)[0])
  config.seed = 1
  assert not np.allclose(first, _first_batches(config, source, 1)[0])


def test_seed_config_views_are_uint8_and_normalised_on_the_device():
  config = food101_seed.get_config()
  config.augment.image_size = 32
  config.batch_size = 4
  config.shuffle_buffer = 8
  with tfds.testing.mock_data(num_examples=8):
    views = _first_batches(config, sources.TfdsSource("food101"), 1)[0]
  assert views.shape == (4, 2, 32, 32, 3) and views.dtype == np.uint8
  assert views.max() > 128  # Full-range pixels, not [0, 1] floats cast to uint8.
  model_input = np.asarray(precision.to_model_input(views, config.augment.normalize))
  expected = (views / 255.0 - np.array(precision.IMAGENET_MEAN)) / np.array(precision.IMAGENET_STD)
  assert model_input.dtype == np.float32
  np.testing.assert_allclose(model_input, expected, atol=1e-5)
  np.testing.assert_allclose(np.asarray(precision.to_model_input(views, False)), views / 255.0,
                             atol=1e-7)


def test_eval_dataset_pads_the_last_batch_and_masks_it():
  config = tiny_food101_config()
  images = np.zeros((21, 10, 12, 3), np.uint8)
  source = ArraySource(images, np.arange(21, dtype=np.int32))
  batches = list(input_pipeline.padded_eval_batches(
      input_pipeline.eval_dataset(config, source, "x", 16), 16))
  assert [b["image"].shape for b in batches] == [(16, 16, 16, 3)] * 2
  masks = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert masks.sum() == 21 and not masks[21:].any()
  np.testing.assert_array_equal(labels[masks], np.arange(21))


def test_digits_split_is_fixed_stratified_and_disjoint():
  source = sources.DigitsSource()
  train_x, train_y = source.arrays("train")
  test_x, test_y = source.arrays("test")
  assert len(train_y) + len(test_y) == 1797
  assert source.num_examples("test") == len(test_y) == 450
  assert train_x.shape[1:] == (8, 8, 3) and train_x.dtype == np.uint8
  # Every class keeps ~25% of its examples for evaluation.
  fractions = np.bincount(test_y) / (np.bincount(test_y) + np.bincount(train_y))
  assert np.all(np.abs(fractions - 0.25) < 0.02)
  np.testing.assert_array_equal(test_y, sources.DigitsSource().arrays("test")[1])


def test_blur_kernel_follows_the_seed_rule():
  assert settings.blur_kernel_size(256) == 25
  assert settings.blur_kernel_size(224) == 23
  assert settings.blur_kernel_size(100) == 11
  assert settings.blur_kernel_size(16) == 1



def test_labels_reach_the_batches_only_for_the_online_probe():
  config = demo.get_config()
  config.batch_size = 8
  source = sources.DigitsSource()
  config.online_probe = True
  batch = next(input_pipeline.pretrain_dataset(config, source).as_numpy_iterator())
  assert batch["label"].shape == (8,) and set(batch["label"]) <= set(range(10))
  config.online_probe = False
  batch = next(input_pipeline.pretrain_dataset(config, source).as_numpy_iterator())
  assert set(batch) == {"views"}


def test_cached_and_uncached_streams_are_identical():
  """The cache changes nothing in the first epoch (2 batches of 16 of 1,347 digits)."""
  config = demo.get_config()
  config.batch_size = 16
  source = sources.DigitsSource()
  plain = _first_batches(config, source, 2)
  config.cache_encoded_images = True
  cached = _first_batches(config, source, 2)
  for a, b in zip(plain, cached):
    np.testing.assert_array_equal(a, b)


def test_cached_epochs_are_each_shuffled_whole():
  """After the first epoch the cache replays its fill order; later epochs must still be
  fresh permutations of every example, not that order mixed by a small buffer."""
  n = 60
  source = ArraySource(np.arange(n), np.arange(n, dtype=np.int32))
  config = demo.get_config()
  config.shuffle_buffer = 4
  config.cache_encoded_images = True

  def epochs():
    ds = input_pipeline._endless_training_examples(  # pylint: disable=protected-access
        config, source)
    ids = np.array([int(e["label"]) for e in ds.take(4 * n).as_numpy_iterator()])
    return ids.reshape(4, n)

  stream = epochs()
  np.testing.assert_array_equal(stream, epochs())  # Reproducible from config.seed.
  for epoch in stream:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))  # Each example once.
  position = np.argsort(stream, axis=1)  # position[e, i]: where example i came in epoch e.
  for a, b in ((0, 1), (1, 2), (2, 3)):
    assert np.mean(np.abs(position[a] - position[b])) > n / 5  # A full shuffle: ~n/3.
  # A 4-element buffer alone moves examples only a few places.
  assert np.mean(np.abs(position[0] - np.arange(n))) < n / 10


def test_global_batches_are_on_the_devices_two_steps_ahead():
  """When the loop takes batch k, batches k+1 and k+2 have already been put on the devices
  (the transfer overlaps the step), and every batch arrives whole and in order."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P

  pulled = []

  def host_batches():
    for index in range(5):
      pulled.append(index)
      yield {"x": np.full((8, 3), index, np.float32)}

  batch_sharding = NamedSharding(sharding.create_mesh(), P("data"))
  batches = input_pipeline.global_batches(host_batches(), batch_sharding, prefetch=2)
  seen = []
  for batch in batches:
    taken = int(np.asarray(batch["x"])[0, 0])
    assert pulled[-1] == min(taken + 2, 4)  # Two ahead, until the stream ends.
    assert batch["x"].sharding == batch_sharding and batch["x"].shape == (8, 3)
    seen.append(taken)
  assert seen == [0, 1, 2, 3, 4] and jax.device_count() == 8


def test_digits_validation_split_is_a_stratified_part_of_train():
  """'train_without_validation' and 'validation' partition 'train' (20%, every class),
  so demo settings are chosen without the test split."""
  source = sources.DigitsSource()
  train_x, train_y = source.arrays("train")
  fit_x, fit_y = source.arrays("train_without_validation")
  val_x, val_y = source.arrays("validation")
  assert len(fit_y) + len(val_y) == len(train_y) and len(val_y) == 270
  key = lambda x, y: {img.tobytes() + bytes([label]) for img, label in zip(x, y)}
  assert key(fit_x, fit_y) | key(val_x, val_y) == key(train_x, train_y)
  assert not key(fit_x, fit_y) & key(val_x, val_y)
  np.testing.assert_allclose(np.bincount(val_y) / len(val_y),
                             np.bincount(train_y) / len(train_y), atol=0.01)
  test_x, _ = source.arrays("test")
  assert not key(val_x, val_y) & key(test_x, source.arrays("test")[1])
