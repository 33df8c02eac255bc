"""Augmentations: each op's distribution and semantics against torchvision's definitions.

Random ops are run over many fixed seeds inside one tf.function (tf.map_fn), so thousands of
samples take about a second. Statistical tolerances are about 5 standard errors; the seeds
are fixed, so the tests are deterministic.
"""

import colorsys
import hashlib
import math
import re

import ml_collections
import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import tensorflow as tf

from configs import augment_presets, cifar10, default, demo, food101, food101_seed
from simclr_jax.data import input_pipeline
from simclr_jax.data.augmentations import (
  cropping,
  photometric,
  randomness,
  recipes,
  settings,
)
from tests.support import paths
from tests.support.helpers import ArraySource

GRAY = np.array([0.299, 0.587, 0.114])


def _seeds(n, salt=0):
  return tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(salt, tf.int64))],
                  axis=1)


def _over_seeds(fn, n, signature, salt=0):
  """fn(seed) for n fixed seeds, vectorised in one graph; returns NumPy."""
  run = tf.function(lambda seeds: tf.map_fn(fn, seeds, fn_output_signature=signature,
                                            parallel_iterations=64))
  out = run(_seeds(n, salt))
  return tf.nest.map_structure(lambda t: t.numpy(), out)


def _rng_image(shape, seed=0):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _channels_last_op(op):
  """A photometric op (channels-first, (3, H, W)) applied to an (H, W, 3) NumPy image."""
  return lambda image, *args: np.transpose(
      op(np.transpose(image, (2, 0, 1)), *args).numpy(), (1, 2, 0))


# ----------------------------------------------------------------------------------------
# RandomResizedCrop.


def _torchvision_crop_sizes(rng, n, height, width, scale, ratio, attempts=10):
  """NumPy Monte-Carlo of torchvision's RandomResizedCrop.get_params (sizes only)."""
  area = height * width
  target = area * rng.uniform(scale[0], scale[1], (n, attempts))
  aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, attempts)))
  # np.round rounds half to even, as Python's round().
  w = np.round(np.sqrt(target * aspect)).astype(np.int64)
  h = np.round(np.sqrt(target / aspect)).astype(np.int64)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = fits.argmax(axis=1)
  rows = np.arange(n)
  in_ratio = width / height
  if in_ratio < min(ratio):
    fw, fh = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    fw, fh = int(round(height * max(ratio))), height
  else:
    fw, fh = width, height
  any_fits = fits.any(axis=1)
  return (np.where(any_fits, h[rows, first], fh), np.where(any_fits, w[rows, first], fw))


def _tf_windows(n, height, width, area_range, ratio_range, salt=0):
  return _over_seeds(
      lambda s: tf.stack(cropping.random_resized_crop_window(
          s, height, width, area_range, ratio_range)),
      n, tf.TensorSpec([4], tf.int32), salt)


def test_random_resized_crop_window_matches_torchvision_distribution():
  height, width, n = 300, 400, 4000
  windows = _tf_windows(n, height, width, (0.08, 1.0), (3 / 4, 4 / 3))
  top, left, h, w = windows.T
  # Inside the image.
  assert (h > 0).all() and (w > 0).all()
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= height).all() and (left + w <= width).all()

  frac = h * w / (height * width)
  log_ratio = np.log(w / h)
  # Ranges, up to the rounding of h and w to whole pixels.
  assert frac.min() >= 0.08 - 0.01 and frac.max() <= 1.0
  assert frac.min() < 0.09 and frac.max() > 0.95  # The whole range is used.
  tol = 2.5 / 100  # log-ratio slack from rounding sides of >= ~90 pixels.
  assert log_ratio.min() >= math.log(3 / 4) - tol
  assert log_ratio.max() <= math.log(4 / 3) + tol

  ref_h, ref_w = _torchvision_crop_sizes(np.random.default_rng(0), 100_000, height, width,
                                         (0.08, 1.0), (3 / 4, 4 / 3))
  ref_frac = ref_h * ref_w / (height * width)
  ref_log_ratio = np.log(ref_w / ref_h)
  # Rejection of crops that do not fit (h > 300 when area > 0.75 * ratio) pulls the mean
  # well below the uniform's 0.54 (to about 0.43).
  assert 0.40 < ref_frac.mean() < 0.47
  se = ref_frac.std() / math.sqrt(n)
  assert abs(frac.mean() - ref_frac.mean()) < 5 * se
  for q in (0.25, 0.5, 0.75):
    assert abs(np.quantile(frac, q) - np.quantile(ref_frac, q)) < 0.035, q
  assert abs(log_ratio.mean() - ref_log_ratio.mean()) < 5 * ref_log_ratio.std() / math.sqrt(n)
  assert scipy.stats.ks_2samp(frac, ref_frac).statistic < 0.05
  assert scipy.stats.ks_2samp(log_ratio, ref_log_ratio).statistic < 0.05

  # Offsets uniform over the valid positions: E[top] = (H - h) / 2.
  for offset, room in ((top, height - h), (left, width - w)):
    z = (offset - room / 2) / (room + 1)
    assert abs(z.mean()) < 5 * 0.29 / math.sqrt(n)


def test_random_resized_crop_window_falls_back_to_the_centre_crop():
  # On a 100x1000 image, 99% of the area at ratio <= 4/3 needs h >= 272: nothing fits.
  windows = _tf_windows(200, 100, 1000, (0.99, 1.0), (3 / 4, 4 / 3))
  expected = [0, (1000 - 133) // 2, 100, 133]  # round(100 * 4 / 3) = 133.
  np.testing.assert_array_equal(windows, np.tile(expected, (200, 1)))
  # And a tall image: width kept, height round(100 / (3/4)) = 133.
  windows = _tf_windows(50, 1000, 100, (0.99, 1.0), (3 / 4, 4 / 3))
  np.testing.assert_array_equal(windows, np.tile([(1000 - 133) // 2, 0, 133, 100], (50, 1)))


def test_random_resized_crop_is_crop_then_antialiased_resize():
  image = (_rng_image((60, 80, 3)) * 255).astype(np.uint8)
  seed = tf.constant([3, 4], tf.int64)
  out = cropping.random_resized_crop(image, seed, 24, (0.08, 1.0), (3 / 4, 4 / 3))
  top, left, h, w = [int(v) for v in cropping.random_resized_crop_window(
      seed, 60, 80, (0.08, 1.0), (3 / 4, 4 / 3))]
  crop = image[top:top + h, left:left + w].astype(np.float32)
  expected = tf.image.resize(crop, (24, 24), method="bilinear", antialias=True)
  assert out.shape == (24, 24, 3) and out.dtype == tf.float32  # Pixel values in [0, 255].
  np.testing.assert_allclose(out, expected, atol=1e-3)


def test_antialiased_resize_one_axis_at_a_time_is_the_joint_resize_bit_for_bit():
  """The per-axis ScaleAndTranslate (the fast form) gives the joint op's result exactly."""
  image = (_rng_image((40, 30, 3), seed=6) * 255).astype(np.uint8)
  joint = tf.function(lambda x, size: tf.image.resize(x, size, "bilinear", antialias=True))
  per_axis = tf.function(lambda x, size: cropping._antialiased_resize(x, size[0], size[1]))
  # Shrinking both axes, enlarging both, one of each, and a float input.
  for source in (image, image.astype(np.float32) / 7):
    for size in ((24, 24), (50, 61), (20, 45), (45, 20), (40, 30)):
      out = per_axis(source, size)
      assert out.shape == size + (3,) and out.dtype == tf.float32
      np.testing.assert_array_equal(out, joint(source, size))


def test_antialiased_resize_of_an_enlarged_image_is_plain_bilinear():
  """When no axis shrinks, `resize` takes plain bilinear: the antialiased weights are the
  same there, so the result equals the antialiased resize to float rounding."""
  image = (_rng_image((20, 30, 3), seed=6) * 255).astype(np.uint8)
  for size in (30, 41):  # Enlarged along both axes (or kept): the shortcut.
    np.testing.assert_allclose(
        cropping.resize(image, size, size),
        tf.image.resize(image, (size, size), method="bilinear", antialias=True), atol=1e-2)
  # Shrinking along one axis only (30 -> 25) still takes the antialiased kernel.
  np.testing.assert_array_equal(
      cropping.resize(image, 25, 25),
      tf.image.resize(image, (25, 25), method="bilinear", antialias=True))
  assert np.abs(cropping.resize(image, 25, 25).numpy()
                - tf.image.resize(image, (25, 25), method="bilinear").numpy()).max() > 1


def test_random_resized_crops_share_one_decode_and_match_their_own_seeds():
  """The views of an image come from one decode; each is still the crop of its own seed."""
  image = (_rng_image((60, 80, 3), seed=5) * 255).astype(np.uint8)
  seeds = randomness.split_seed(tf.constant([9, 1], tf.int64), 3)
  crops = cropping.random_resized_crops(image, seeds, 20, (0.08, 1.0), (3 / 4, 4 / 3))
  assert len(crops) == 3
  for crop, seed in zip(crops, seeds):
    np.testing.assert_array_equal(
        crop, cropping.random_resized_crop(image, seed, 20, (0.08, 1.0), (3 / 4, 4 / 3)))
  assert np.abs(crops[0].numpy() - crops[1].numpy()).mean() > 5  # Different windows.


def test_bounding_window_holds_every_window_and_no_more():
  windows = tf.constant([[10, 20, 30, 40], [5, 50, 10, 5], [12, 22, 3, 3]], tf.int32)
  np.testing.assert_array_equal(cropping.bounding_window(windows), [5, 20, 35, 40])
  # Windows relative to the decoded region (decode_for_crops) stay inside it.
  image = np.zeros((60, 80, 3), np.uint8)
  for salt in range(20):
    seeds = randomness.split_seed(tf.constant([salt, 2], tf.int64), 2)
    region, relative = cropping.decode_for_crops(tf.io.encode_jpeg(image), seeds,
                                                (0.08, 1.0), (3 / 4, 4 / 3))
    absolute = cropping.crop_windows(seeds, 60, 80, (0.08, 1.0), (3 / 4, 4 / 3)).numpy()
    relative = relative.numpy()
    height, width = region.shape[:2]
    assert (relative[:, :2] >= 0).all()
    assert (relative[:, 0] + relative[:, 2] <= height).all()
    assert (relative[:, 1] + relative[:, 3] <= width).all()
    np.testing.assert_array_equal(relative[:, 2:], absolute[:, 2:])  # Same crop sizes.
    assert height == max(absolute[:, 0] + absolute[:, 2]) - min(absolute[:, 0])
    assert width == max(absolute[:, 1] + absolute[:, 3]) - min(absolute[:, 1])


def test_resize_without_antialiasing_is_plain_bilinear():
  """resize_antialias=False (big_vision, TF SimCLR): plain bilinear, which aliases when
  shrinking; the default matches PIL's antialiased bilinear (decode_test)."""
  stripes = np.zeros((48, 48, 3), np.uint8)
  stripes[:, ::2] = 255  # One-pixel stripes: averaging them gives mid-grey.
  seed = tf.constant([5, 6], tf.int64)
  area = (1.0, 1.0)  # The whole image (ratio 1): a pure resize 48 -> 16, by 3.
  plain = cropping.random_resized_crop(stripes, seed, 16, area, (1.0, 1.0), antialias=False)
  smooth = cropping.random_resized_crop(stripes, seed, 16, area, (1.0, 1.0))
  expected = tf.image.resize(stripes.astype(np.float32), (16, 16), method="bilinear",
                             antialias=False)
  np.testing.assert_allclose(plain, expected, atol=1e-3)
  assert np.abs(smooth.numpy()[:, 1:-1] / 255 - 0.5).max() < 0.1  # Averaged.
  assert np.abs(plain.numpy() / 255 - 0.5).min() > 0.4  # Aliased: each sample on a stripe.


# ----------------------------------------------------------------------------------------
# The photometric draws (what the pipeline applies), flip and grayscale.

DRAW_SPECS = {"flip": tf.TensorSpec([], tf.bool), "jitter": tf.TensorSpec([], tf.bool),
              "jitter_factors": tf.TensorSpec([4], tf.float32),
              "jitter_order": tf.TensorSpec([4], tf.int32),
              "grayscale": tf.TensorSpec([], tf.bool), "blur": tf.TensorSpec([], tf.bool),
              "blur_sigma": tf.TensorSpec([], tf.float32),
              "solarize": tf.TensorSpec([], tf.bool)}


def _view1(aug):
  return settings.view_settings(aug)[0]


def _draws(n, aug, salt=0):
  """photometric_draws (view 1's settings) for n fixed seeds, as NumPy arrays keyed as
  DRAW_SPECS."""
  return _over_seeds(lambda s: recipes.photometric_draws(randomness.split_seed(s, 6),
                                                         _view1(aug)),
                     n, DRAW_SPECS, salt)


def _pair_draws(n, aug, salt=0):
  """simclr_draws of both views for n fixed seed pairs (split as the pipeline splits an
  element's seed): [view 1's, view 2's] NumPy arrays keyed as DRAW_SPECS."""
  return _over_seeds(lambda s: recipes.simclr_draws(randomness.split_seed(s, 2), aug), n,
                     [DRAW_SPECS, DRAW_SPECS], salt)


def _rate_ok(flags, probability):
  n = len(flags)
  return abs(flags.mean() - probability) < 5 * math.sqrt(probability * (1 - probability) / n)


def test_draws_apply_each_op_at_its_rate_independently():
  n = 4000
  draws = _draws(n, _seed_aug(blur_probability=0.5))  # Seed config, blur p as the paper.
  for name, probability in [("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.2),
                            ("blur", 0.5)]:
    assert _rate_ok(draws[name], probability), name
  # Each op has its own seed: joint rates are products.
  assert _rate_ok(draws["flip"] & draws["grayscale"], 0.1)
  assert _rate_ok(draws["jitter"] & draws["blur"], 0.4)
  # A probability of 0 or 1 is never or always.
  fixed = _draws(200, _seed_aug(flip_probability=0.0, blur_probability=1.0), salt=1)
  assert not fixed["flip"].any() and fixed["blur"].all()
  assert not draws["solarize"].any()  # Off unless set (SimCLR's configs).


def test_solarize_is_drawn_at_its_rate_independently():
  n = 4000
  draws = _draws(n, _seed_aug(solarize_probability=0.2), salt=2)
  assert _rate_ok(draws["solarize"], 0.2)
  # Its own seed: joint rates with the other ops are products.
  assert _rate_ok(draws["solarize"] & draws["blur"], 0.2)  # The seed config blurs always.
  assert _rate_ok(draws["solarize"] & draws["grayscale"], 0.04)
  assert _rate_ok(draws["solarize"] & draws["jitter"], 0.16)
  assert _rate_ok(draws["solarize"] & draws["flip"], 0.1)
  # Setting it leaves the other draws as they were, seed for seed.
  without = _draws(n, _seed_aug(), salt=2)
  for name in DRAW_SPECS:
    if name != "solarize":
      np.testing.assert_array_equal(draws[name], without[name], err_msg=name)
  fixed = _draws(200, _seed_aug(solarize_probability=1.0), salt=3)
  assert fixed["solarize"].all()


def test_solarize_matches_numpy_at_and_around_the_threshold():
  """BYOL's solarize, where(x < 0.5, x, 1 - x) on [0, 1] values: 0.5 itself is inverted,
  the float32 just below it is not."""
  below = np.nextafter(np.float32(0.5), np.float32(0))
  above = np.nextafter(np.float32(0.5), np.float32(1))
  x = np.concatenate([[0.0, below, 0.5, above, 1.0],
                      _rng_image((3 * 4 * 5 - 5,), seed=12)]).astype(np.float32)
  x = x.reshape(3, 4, 5)  # Channels first, as the chain's.
  expected = np.where(x < 0.5, x, 1 - x)
  out = photometric.solarize(x).numpy()
  np.testing.assert_array_equal(out, expected)
  assert out.flat[1] == below and out.flat[2] == 0.5 and out.flat[3] == np.float32(1) - above
  assert out.flat[0] == 0 and out.flat[4] == 0
  # On uint8 values k / 255: k >= 128 becomes 255 - k (torchvision's RandomSolarize(128)).
  k = np.arange(256)
  levels = tf.constant((k / 255).astype(np.float32))
  np.testing.assert_array_equal(photometric.to_uint8(photometric.solarize(levels)),
                                np.where(k >= 128, 255 - k, k))


# ----------------------------------------------------------------------------------------
# Per-view settings (BYOL's asymmetric views).


def _byol_aug(**overrides):
  aug = augment_presets.use_byol_augmentations(_seed_aug())
  aug.update(overrides)
  return aug


def test_view_settings_are_the_shared_fields_unless_a_view_sets_them():
  for module in (default, food101, food101_seed, demo, cifar10):
    aug = module.get_config().augment
    first, second = settings.view_settings(aug)
    assert first == second, module.__name__
    s = aug.color_jitter_strength
    assert first.color_jitter == (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    assert first.solarize_probability == 0.0
    assert (first.flip_probability, first.blur_probability) == (aug.flip_probability,
                                                                aug.blur_probability)
  aug = _seed_aug(color_jitter_strength=1.0, blur_probability=0.5)
  aug.lock()  # As main.py's flags; ints and tuples go into the typed placeholders.
  aug.view2.blur_probability = 1
  aug.view2.color_jitter = (0.4, 0.4, 0.2, 0.1)
  aug.view1.color_jitter_strength = 0.25
  first, second = settings.view_settings(aug)
  assert first.blur_probability == 0.5 and second.blur_probability == 1.0
  assert first.color_jitter == (0.2, 0.2, 0.2, 0.05)  # The view's strength.
  assert second.color_jitter == (0.4, 0.4, 0.2, 0.1)  # The view's explicit jitter.
  aug.color_jitter = (0.1, 0.2, 0.3, 0.4)  # Shared explicit jitter: over the shared s,
  aug.view1.color_jitter_strength = None  # not over a view's own settings.
  assert settings.view_settings(aug)[0].color_jitter == (0.1, 0.2, 0.3, 0.4)
  assert settings.view_settings(aug)[1].color_jitter == (0.4, 0.4, 0.2, 0.1)
  # A config from before per-view settings: both views shared, no solarize.
  old = _seed_aug().to_dict()
  for name in ("view1", "view2", "solarize_probability", "color_jitter"):
    del old[name]
  first, second = settings.view_settings(ml_collections.ConfigDict(old))
  assert first == second == settings.view_settings(_seed_aug())[0]


def test_byol_preset_sets_the_asymmetric_recipe():
  first, second = settings.view_settings(_byol_aug())
  for view in (first, second):
    assert view.flip_probability == 0.5
    assert view.color_jitter == (0.4, 0.4, 0.2, 0.1)
    assert view.color_jitter_probability == 0.8 and view.grayscale_probability == 0.2
    assert view.blur_sigma_range == (0.1, 2.0)
  assert (first.blur_probability, second.blur_probability) == (1.0, 0.1)
  assert (first.solarize_probability, second.solarize_probability) == (0.0, 0.2)
  settings.check_augment_config(_byol_aug())


def test_per_view_probabilities_are_drawn_at_each_views_rates():
  """BYOL's views: blur p 1.0 / 0.1 and solarize p 0 / 0.2, the rest shared."""
  n = 4000
  first, second = _pair_draws(n, _byol_aug())
  assert first["blur"].all() and not first["solarize"].any()  # View 1: always, never.
  assert _rate_ok(second["blur"], 0.1) and _rate_ok(second["solarize"], 0.2)
  for draws in (first, second):
    for name, probability in [("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.2)]:
      assert _rate_ok(draws[name], probability), name
    # ColorJitter(0.4, 0.4, 0.2, 0.1): saturation in [0.8, 1.2].
    for index, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
      f = draws["jitter_factors"][:, index]
      assert f.min() >= low - 1e-6 and f.max() <= high + 1e-6
      assert scipy.stats.kstest(f, "uniform", args=(low, high - low)).statistic < 0.04
  # The views draw independently: joint rates are products.
  assert _rate_ok(second["solarize"] & first["grayscale"], 0.04)
  assert _rate_ok(second["blur"] & second["solarize"], 0.02)
  assert _rate_ok(first["flip"] & second["flip"], 0.25)


def test_simclr_views_solarize_only_the_second_byol_view():
  """End to end: on a constant image with jitter and grayscale off, a view is 200
  everywhere, or 55 (= 255 - 200) when solarized: never view 1, view 2 at p 0.2."""
  image = np.full((40, 40, 3), 200, np.uint8)
  aug = _byol_aug(image_size=16, color_jitter_probability=0.0, grayscale_probability=0.0)
  n = 1000
  views = _over_seeds(lambda s: recipes.simclr_views(image, randomness.split_seed(s, 2), aug),
                      n, tf.TensorSpec([2, 16, 16, 3], tf.uint8))
  solarized = (views == 55).all(axis=(2, 3, 4))
  assert (solarized | (views == 200).all(axis=(2, 3, 4))).all()
  assert not solarized[:, 0].any()
  assert _rate_ok(solarized[:, 1], 0.2)


def test_explicit_color_jitter_equals_the_strengths_bit_for_bit():
  """color_jitter = (0.4, 0.4, 0.4, 0.1) is strength 0.5 (the seed's), shared or per view:
  the same draws and views, bit for bit."""
  image = (_rng_image((48, 64, 3), seed=13) * 255).astype(np.uint8)
  seeds = randomness.split_seed(tf.constant([4, 5], tf.int64), 16)
  strength = _seed_aug(color_jitter_strength=0.5)
  explicit = _seed_aug(color_jitter_strength=1.0, color_jitter=(0.4, 0.4, 0.4, 0.1))
  per_view = _seed_aug(color_jitter_strength=1.0)
  per_view.view1.color_jitter = (0.4, 0.4, 0.4, 0.1)
  per_view.view2.color_jitter_strength = 0.5
  reference = [recipes.simclr_views(image, pair, strength).numpy()
               for pair in tf.split(seeds, 8)]
  for aug in (explicit, per_view):
    assert settings.view_settings(aug) == settings.view_settings(strength)
    for pair, expected in zip(tf.split(seeds, 8), reference):
      np.testing.assert_array_equal(recipes.simclr_views(image, pair, aug), expected)
  jittered = [d["jitter"].numpy() for pair in tf.split(seeds, 8)
              for d in recipes.simclr_draws(pair, strength)]
  assert any(jittered)  # The jitter ran.
  # The strength's jitter (s = 1: (0.8, 0.8, 0.8, 0.2)) is another.
  assert settings.view_settings(per_view)[0] != settings.view_settings(_seed_aug(
      color_jitter_strength=1.0))[0]


def _set_field(aug, dotted, value):
  *blocks, name = dotted.split(".")
  for block in blocks:
    aug = aug[block]
  aug[name] = value


@pytest.mark.parametrize("field,value", [
    ("flip_probability", -0.1), ("grayscale_probability", 1.2),
    ("solarize_probability", 1.5), ("color_jitter_strength", -0.5),
    ("color_jitter", (0.4, 0.4, 0.2)), ("color_jitter", (0.4, -0.4, 0.2, 0.1)),
    ("color_jitter", (0.4, 0.4, 0.2, 0.6)), ("blur_sigma_range", (2.0, 0.1)),
    ("view2.blur_probability", 1.5), ("view1.solarize_probability", -0.2),
    ("view1.color_jitter", (1.0, 2.0, 3.0)), ("view2.color_jitter_strength", -1.0),
    ("view2.blur_sigma_range", (0.0, 2.0)), ("view1.color_jitter_probability", 2.0)])
def test_check_augment_config_rejects_bad_values_naming_the_field(field, value):
  aug = _byol_aug()
  _set_field(aug, field, value)
  with pytest.raises(ValueError, match=re.escape(f"augment.{field} must ")) as error:
    settings.check_augment_config(aug)
  assert "\n" not in str(error.value)


def test_check_augment_config_accepts_the_configs_and_rejects_unknown_view_fields():
  for module in (default, food101, food101_seed, demo, cifar10):
    settings.check_augment_config(module.get_config().augment)
  settings.check_augment_config(_byol_aug())
  aug = _seed_aug()
  aug.view1.blur_prob = 0.5  # A typo would otherwise be ignored.
  with pytest.raises(ValueError, match=re.escape("augment.view1.blur_prob is not a per-view")):
    settings.check_augment_config(aug)


def test_flip_left_right_reverses_the_width_axis():
  image = _rng_image((3, 4, 6))  # Channels first.
  np.testing.assert_array_equal(photometric.flip_left_right(image), image[:, :, ::-1])


def test_grayscale_puts_the_luma_in_every_channel():
  image = _rng_image((3, 4, 5), seed=1)  # Channels first.
  luma = np.tensordot(GRAY, image.astype(np.float64), axes=1)
  np.testing.assert_allclose(photometric.grayscale(image), np.stack([luma] * 3), atol=1e-6)


# ----------------------------------------------------------------------------------------
# Colour jitter.


def test_jitter_factors_are_uniform_in_torchvision_ranges():
  n = 4000
  factors = _draws(n, _seed_aug())["jitter_factors"]  # ColorJitter(0.4, 0.4, 0.4, 0.1).
  for index, (low, high) in enumerate([(0.6, 1.4)] * 3 + [(-0.1, 0.1)]):
    f = factors[:, index]
    assert f.min() >= low - 1e-6 and f.max() <= high + 1e-6
    assert scipy.stats.kstest(f, "uniform", args=(low, high - low)).statistic < 0.04
  # Independent factors.
  assert abs(np.corrcoef(factors[:, 0], factors[:, 1])[0, 1]) < 5 / math.sqrt(n)
  # Strength s gives (0.8s, 0.8s, 0.8s, 0.2s): the seed's s = 0.5 halved, (0.2, ..., 0.05).
  half = _draws(500, _seed_aug(color_jitter_strength=0.25), salt=1)["jitter_factors"]
  assert half[:, 0].min() >= 0.8 - 1e-6 and half[:, 0].max() <= 1.2 + 1e-6
  assert np.abs(half[:, 3]).max() <= 0.05 + 1e-6


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 1.7])
def test_adjust_brightness_contrast_saturation_match_numpy(factor):
  x = _rng_image((6, 7, 3), seed=2).astype(np.float64)
  gray = x @ GRAY
  expected = {
      photometric.adjust_brightness: np.clip(factor * x, 0, 1),
      photometric.adjust_contrast: np.clip(factor * x + (1 - factor) * gray.mean(), 0, 1),
      photometric.adjust_saturation: np.clip(factor * x + (1 - factor) * gray[..., None], 0, 1),
  }
  for op, ref in expected.items():
    np.testing.assert_allclose(_channels_last_op(op)(x.astype(np.float32), factor), ref,
                               atol=1e-5, err_msg=op.__name__)
    if factor == 1.7:
      assert (ref == 1.0).any() and (factor * x > 1).any()  # Clipping is exercised.


def test_adjust_hue():
  adjust_hue = _channels_last_op(photometric.adjust_hue)
  x = _rng_image((6, 7, 3), seed=3)
  np.testing.assert_allclose(adjust_hue(x, 0.0), x, atol=1e-5)
  red = np.array([[[1.0, 0.0, 0.0]]], np.float32)
  np.testing.assert_allclose(adjust_hue(red, 0.5), [[[0.0, 1.0, 1.0]]], atol=1e-5)
  np.testing.assert_allclose(adjust_hue(red, 1 / 3), [[[0.0, 1.0, 0.0]]], atol=1e-5)
  np.testing.assert_allclose(adjust_hue(red, -1 / 3), [[[0.0, 0.0, 1.0]]], atol=1e-5)
  # Grey has no hue.
  grey = np.full((2, 2, 3), 0.3, np.float32)
  np.testing.assert_allclose(adjust_hue(grey, 0.37), grey, atol=1e-6)


@pytest.mark.parametrize("delta", [-0.5, -0.23, 0.1, 0.41])
def test_adjust_hue_matches_colorsys(delta):
  """Against Python's colorsys HSV round trip, pixel by pixel (hue rotated mod 1)."""
  x = _rng_image((9, 11, 3), seed=10)
  x[0, :3] = [[0.2, 0.2, 0.2], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]  # Grey, pure, ties.
  expected = np.empty_like(x)
  for index in np.ndindex(x.shape[:2]):
    hue, saturation, value = colorsys.rgb_to_hsv(*x[index])
    expected[index] = colorsys.hsv_to_rgb((hue + delta) % 1.0, saturation, value)
  np.testing.assert_allclose(_channels_last_op(photometric.adjust_hue)(x, delta), expected,
                             atol=2e-6)


def test_color_jitter_applies_the_four_ops_in_a_uniform_random_order():
  image = _rng_image((3, 5, 6), seed=4)  # Channels first.
  ops = [photometric.adjust_brightness, photometric.adjust_contrast, photometric.adjust_saturation,
         photometric.adjust_hue]
  draws = _draws(40, _seed_aug())
  differs = []
  for factors, order in zip(draws["jitter_factors"], draws["jitter_order"]):
    out = photometric.apply_color_jitter(image, factors, tf.constant(order)).numpy()
    # The four adjustments with the drawn factors, in the drawn order ...
    expected = image
    for index in order:
      expected = ops[index](expected, factors[index])
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # ... which matters: a fixed b-c-s-h composition often gives another image (the ops
    # commute only without clipping and without hue).
    fixed = image
    for index in range(4):
      fixed = ops[index](fixed, factors[index])
    differs.append(np.abs(out - fixed).max() > 1e-3)
  assert np.mean(differs) > 0.2

  # The order is a uniform permutation: all 24 about equally often.
  m = 4800
  orders = _draws(m, _seed_aug(), salt=1)["jitter_order"]
  assert (np.sort(orders, axis=1) == np.arange(4)).all()
  codes = orders @ np.array([64, 16, 4, 1])
  counts = np.unique(codes, return_counts=True)[1]
  assert len(counts) == 24
  assert scipy.stats.chisquare(counts).pvalue > 1e-5
  assert np.abs(counts - m / 24).max() < 5 * math.sqrt(m / 24)


# ----------------------------------------------------------------------------------------
# Gaussian blur.


def test_blur_kernel_size():
  assert settings.blur_kernel_size(256) == 25
  assert settings.blur_kernel_size(224) == 23
  assert settings.blur_kernel_size(32) == 3
  assert settings.blur_kernel_size(100) == 11


@pytest.mark.parametrize("kernel_size,sigma", [(3, 0.1), (3, 1.0), (23, 2.0), (25, 0.7)])
def test_gaussian_kernel_1d_matches_numpy(kernel_size, sigma):
  x = np.arange(kernel_size) - (kernel_size - 1) / 2
  pdf = np.exp(-x**2 / (2 * sigma**2))
  np.testing.assert_allclose(photometric.gaussian_kernel_1d(kernel_size, sigma), pdf / pdf.sum(),
                             atol=1e-6)


def test_reflect_padding_conventions_agree():
  # torch 'reflect' == numpy 'reflect' == tf 'REFLECT' (edge not repeated) == scipy.ndimage
  # 'mirror'; scipy's 'reflect' would repeat the edge (numpy 'symmetric').
  x = np.arange(7.0)
  padded = np.pad(x, 3, mode="reflect")
  np.testing.assert_array_equal(padded, [3, 2, 1, 0, 1, 2, 3, 4, 5, 6, 5, 4, 3])
  np.testing.assert_array_equal(tf.pad(x, [[3, 3]], mode="REFLECT"), padded)
  w = np.random.default_rng(5).uniform(size=7)
  valid = np.array([padded[i:i + 7] @ w for i in range(7)])
  np.testing.assert_allclose(scipy.ndimage.correlate1d(x, w, mode="mirror"), valid)


@pytest.mark.parametrize("shape,kernel_size,sigma", [((20, 24, 3), 7, 1.3),
                                                      ((32, 30, 3), 25, 2.0),
                                                      ((16, 16, 3), 3, 0.5)])
def test_gaussian_blur_matches_scipy(shape, kernel_size, sigma):
  image = _rng_image(shape, seed=6)
  x = np.arange(kernel_size) - (kernel_size - 1) / 2
  k = np.exp(-x**2 / (2 * sigma**2))
  k /= k.sum()
  expected = scipy.ndimage.correlate1d(image.astype(np.float64), k, axis=0, mode="mirror")
  expected = scipy.ndimage.correlate1d(expected, k, axis=1, mode="mirror")
  out = _channels_last_op(photometric.gaussian_blur)(image, tf.constant(sigma), kernel_size)
  assert out.shape == shape
  np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [23, 25])
def test_truncated_blur_equals_the_full_kernel(kernel_size):
  """`gaussian_blur` drops the taps beyond 5 sigma; every pixel stays within 1e-5 of
  torchvision's full kernel, over the seed's sigma range, on a worst-case checkerboard."""
  radii = photometric.blur_radii(kernel_size)
  assert radii[0] == 2 and radii[-1] == kernel_size // 2
  checkers = np.indices((40, 40)).sum(axis=0) % 2  # Neighbours differ by the full range.
  image = np.stack([checkers, 1 - checkers, _rng_image((40, 40), seed=2)]).astype(np.float32)
  blur = tf.function(photometric.gaussian_blur, jit_compile=True)
  used = set()
  for sigma in np.linspace(0.1, 2.0, 14):
    x = np.arange(kernel_size) - (kernel_size - 1) / 2
    k = np.exp(-x**2 / (2 * sigma**2))
    k /= k.sum()
    expected = scipy.ndimage.correlate1d(image.astype(np.float64), k, axis=1, mode="mirror")
    expected = scipy.ndimage.correlate1d(expected, k, axis=2, mode="mirror")
    np.testing.assert_allclose(blur(image, tf.constant(sigma, tf.float32), kernel_size),
                               expected, atol=1e-5)
    used.add(radii[int(photometric.blur_radius_index(tf.constant(sigma, tf.float32), kernel_size))])
  assert min(used) == 2 and max(used) == 10  # Sigma 2 needs radius 10 of the full 11 or 12.
  # A sigma wider than the kernel allows gets the full kernel.
  index = photometric.blur_radius_index(tf.constant(3.0), kernel_size)
  assert radii[int(index)] == kernel_size // 2


def test_gaussian_blur_of_a_constant_is_the_constant():
  image = np.full((3, 16, 16), 0.37, np.float32)
  np.testing.assert_allclose(photometric.gaussian_blur(image, 1.7, 9), image, atol=1e-6)


def test_blur_sigma_is_uniform_in_its_range():
  sigma = _draws(3000, _seed_aug(blur_sigma_range=(0.1, 2.0)))["blur_sigma"]
  assert sigma.min() >= 0.1 - 1e-6 and sigma.max() <= 2.0 + 1e-6
  assert scipy.stats.kstest(sigma, "uniform", args=(0.1, 1.9)).statistic < 0.04


# 16 (the demo's) in the default suite; 64 and 224 (about 40 s together) in the slow step.
@pytest.mark.parametrize("size", [16, pytest.param(64, marks=pytest.mark.slow),
                                  pytest.param(224, marks=pytest.mark.slow)])
def test_materialize_leaves_the_compiled_photometric_ops_bit_identical(monkeypatch, size):
  """The optimisation barriers in adjust_hue and the blur change only what XLA fuses: the
  compiled views are equal, bit for bit, to those compiled without them."""
  aug = _seed_aug(image_size=size)
  view_fn = recipes._photometric_view.python_function  # pylint: disable=protected-access
  seeds = [randomness.split_seed(tf.constant([9, i], tf.int64), 6) for i in range(12)]
  draws = [recipes.photometric_draws(s, _view1(aug)) for s in seeds]
  views = [tf.constant(_rng_image((size, size, 3), seed=i) * 255.0) for i in range(3)]
  kernel = settings.blur_kernel_size(size)

  def all_views():
    compiled = tf.function(view_fn, jit_compile=True)
    return [compiled(views[i % 3], d, kernel).numpy() for i, d in enumerate(draws)]

  def hue_and_blur():
    hue = tf.function(photometric.adjust_hue, jit_compile=True)
    blur = tf.function(photometric._blur_within, jit_compile=True)  # pylint: disable=protected-access
    image = tf.constant(np.transpose(_rng_image((size, size, 3), seed=7), (2, 0, 1)))
    return ([hue(image, tf.constant(d)).numpy() for d in (-0.1, 0.03)]
            + [blur(image, tf.constant(s), r).numpy() for s, r in ((0.7, 4), (1.9, 10))])

  assert any(d["jitter"] for d in draws) and any(d["blur"] for d in draws)  # Both branches run.
  with_barriers = all_views() + hue_and_blur()
  monkeypatch.setattr(photometric, "materialize", lambda tensor: tensor)
  without = all_views() + hue_and_blur()
  for a, b in zip(with_barriers, without):
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------
# Full views.


def _seed_aug(**overrides):
  aug = food101_seed.get_config().augment
  aug.image_size = 32
  aug.update(overrides)
  return aug


def test_configs_blur_and_jitter_strength():
  seed_aug = food101_seed.get_config().augment
  assert seed_aug.blur_probability == 1.0
  assert food101.get_config().augment.blur_probability == 0.5
  s = seed_aug.color_jitter_strength  # ColorJitter(0.4, 0.4, 0.4, 0.1).
  assert (0.8 * s, 0.2 * s) == pytest.approx((0.4, 0.1))
  assert seed_aug.color_jitter_probability == 0.8 and seed_aug.grayscale_probability == 0.2
  assert settings.blur_kernel_size(seed_aug.image_size) == 25


def test_simclr_views_seed_config():
  image = (_rng_image((48, 64, 3), seed=8) * 255).astype(np.uint8)
  aug = _seed_aug()

  def one_view(seed):
    return recipes.simclr_views(image, tf.constant([seed], tf.int64), aug)[0]

  view, other = one_view([1, 2]), one_view([1, 3])
  assert view.shape == (32, 32, 3) and view.dtype == tf.uint8
  np.testing.assert_array_equal(view, one_view([1, 2]))  # Reproducible from its seed.
  assert np.abs(view.numpy().astype(float) - other.numpy()).mean() > 0.05 * 255
  # Views made together (one decode) equal views made one by one, seed for seed.
  seeds = tf.constant([[1, 2], [1, 3]], tf.int64)
  np.testing.assert_array_equal(recipes.simclr_views(image, seeds, aug), tf.stack([view, other]))

  n = 400
  views = _over_seeds(lambda s: recipes.simclr_views(image, s[None], aug)[0], n,
                      tf.TensorSpec([32, 32, 3], tf.uint8))
  # Grayscale (p = 0.2) is the only step that leaves the three channels equal.
  gray = (views == views[..., :1]).all(axis=(1, 2, 3))
  assert abs(gray.mean() - 0.2) < 5 * math.sqrt(0.16 / n)


def test_photometric_view_is_the_ops_in_order_then_rounded_to_uint8():
  """The compiled chain equals the ops composed one by one, with the same draws."""
  view = _rng_image((12, 14, 3), seed=11)
  aug = _seed_aug(solarize_probability=0.5)
  solarized = []
  for salt in range(8):
    draws = recipes.photometric_draws(randomness.split_seed(tf.constant([3, salt], tf.int64), 6),
                                      _view1(aug))
    out = recipes._photometric_view(view * 255, draws, 5)  # pylint: disable=protected-access
    image = np.transpose(view, (2, 0, 1))
    if draws["flip"]:
      image = photometric.flip_left_right(image)
    if draws["jitter"]:
      image = photometric.apply_color_jitter(image, draws["jitter_factors"], draws["jitter_order"])
    if draws["grayscale"]:
      image = photometric.grayscale(image)
    if draws["blur"]:
      image = photometric.gaussian_blur(image, draws["blur_sigma"], 5)
    if draws["solarize"]:
      image = np.where(np.asarray(image) < 0.5, image, 1 - np.asarray(image))
    solarized.append(bool(draws["solarize"]))
    expected = np.transpose(np.asarray(image), (1, 2, 0)) * 255
    assert out.dtype == tf.uint8 and out.shape == (12, 14, 3)
    assert np.abs(out.numpy() - expected).max() <= 0.5 + 1e-3  # Rounded, not truncated.
  assert any(solarized) and not all(solarized)  # Both branches ran.


def test_eval_view_resizes_shorter_side_and_centre_crops():
  aug = _seed_aug(eval_crop_fraction=0.875)
  image = (_rng_image((100, 200, 3), seed=9) * 255).astype(np.uint8)
  out = recipes.eval_view(image, aug)
  # 32 / 0.875 = 36.57: shorter side 100 -> 37, longer 200 -> round(73.14) = 73.
  resized = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), (37, 73),
                            method="bilinear", antialias=True).numpy()
  expected = np.round(np.clip(resized, 0, 1)[2:34, 20:52] * 255)
  assert out.shape == (32, 32, 3) and out.dtype == tf.uint8
  np.testing.assert_allclose(out, expected, atol=1)  # Float rounding at .5 boundaries.
  assert (out.numpy() == expected).mean() > 0.99
  np.testing.assert_array_equal(out, recipes.eval_view(image, aug))  # Deterministic.

  bright = np.zeros((100, 200, 3), np.uint8)
  bright[40:60, 90:110] = 255
  out = recipes.eval_view(bright, aug).numpy()
  assert out[14:18, 14:18].min() > 0.9 * 255
  assert out[:3, :3].max() < 0.05 * 255 and out[-3:, -3:].max() < 0.05 * 255


# ----------------------------------------------------------------------------------------
# The default pipeline's output, pinned.

PIN_FILE = str(paths.FILES / "augment_views_pin.npz")
PIN_CONFIGS = {"food101": food101, "food101_seed": food101_seed, "demo": demo,
               "cifar10": cifar10}


def pin_views(jpegs):
  """Each existing config's first pretraining batch (8 images, both views) from 4 images,
  given as decoded uint8 arrays and as JPEG bytes (the fused crop-decode): name -> views.

  Uses only what the augmentations had before per-view settings and solarize
  (tests/support/files/make_augment_views_pin.py ran this with that code)."""
  decoded = np.stack([tf.io.decode_jpeg(j, channels=3).numpy() for j in jpegs])
  out = {}
  for name, module in PIN_CONFIGS.items():
    config = module.get_config()
    config.batch_size, config.shuffle_buffer, config.online_probe = 8, 4, False
    for kind, images in (("decoded", decoded), ("jpeg", np.array(jpegs, dtype=object))):
      source = ArraySource(images, np.arange(len(jpegs), dtype=np.int32))
      ds = input_pipeline.pretrain_dataset(config, source)
      out[f"{name}/{kind}"] = next(ds.as_numpy_iterator())["views"]
  return out


def views_digest(views) -> str:
  return hashlib.sha256(f"{views.shape}{views.dtype}".encode() + views.tobytes()).hexdigest()


@pytest.mark.slow  # About 25 s: it builds every pinned config's pipeline.
def test_default_pipeline_views_are_bit_identical_to_before_per_view_settings():
  """Every existing (symmetric, solarize-free) config gives the views it gave before
  per-view settings and solarize existed, bit for bit: same draws, seeds and ops.

  The pin was made on this project's 2-core CPU machine; XLA's CPU code (so its float
  rounding) depends on the processor (docs/demo_results.md), so elsewhere a few pixels could
  be off by 1.
  """
  pin = np.load(PIN_FILE)
  jpegs = [pin[f"jpeg_{i}"].tobytes() for i in range(4)]
  views = pin_views(jpegs)
  assert sorted(views) == sorted(k[len("sha256/"):] for k in pin if k.startswith("sha256/"))
  for name, value in views.items():
    size = PIN_CONFIGS[name.split("/")[0]].get_config().augment.image_size
    assert value.shape == (8, 2, size, size, 3) and value.dtype == np.uint8, name
    if f"views/{name}" in pin:  # The small views are stored whole: a diff says where.
      np.testing.assert_array_equal(value, pin[f"views/{name}"], err_msg=name)
    assert views_digest(value) == str(pin[f"sha256/{name}"]), name
