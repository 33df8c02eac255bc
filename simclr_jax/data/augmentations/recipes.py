"""The recipes: the two pretraining views of an image (`simclr_views`, each view's draws
then one compiled photometric chain), the linear/fine-tuning crop and flip
(`crop_flip_view`) and the evaluation view (`eval_view`)."""

from __future__ import annotations

import tensorflow as tf

from simclr_jax.data.augmentations import cropping, photometric, randomness, settings


def photometric_draws(seeds, view: settings.ViewAugment) -> dict[str, tf.Tensor]:
  """Every random choice of the photometric ops of one view with settings `view` (one of
  `settings.view_settings`), from `seeds` (6, 2): flip, whether to jitter, the jitter's
  factors and order, grayscale, blur and its sigma, solarize.

  Drawn outside `_photometric_view` because XLA's random number generators differ from
  TensorFlow's kernels: this way the compiled ops use the draws whose distributions
  tests/augmentations_test.py checks.
  """
  factors, order = photometric.jitter_draws(seeds[2], *view.color_jitter)
  blur, sigma = photometric.blur_draws(seeds[4], view.blur_probability, view.blur_sigma_range)
  return {"flip": randomness.coin(seeds[0], view.flip_probability),
          "jitter": randomness.coin(seeds[1], view.color_jitter_probability),
          "jitter_factors": factors, "jitter_order": order,
          "grayscale": randomness.coin(seeds[3], view.grayscale_probability),
          "blur": blur, "blur_sigma": sigma,
          "solarize": randomness.coin(seeds[5], view.solarize_probability)}


def _flip_only_draws(flip) -> dict[str, tf.Tensor]:
  """`photometric_draws` that flip (or not) and change nothing else."""
  false = tf.constant(False)
  return {"flip": flip, "jitter": false, "jitter_factors": tf.constant([1.0, 1.0, 1.0, 0.0]),
          "jitter_order": tf.range(4), "grayscale": false, "blur": false,
          "blur_sigma": tf.constant(1.0), "solarize": false}


@tf.function(jit_compile=True)
def _photometric_view(view, view_draws: dict[str, tf.Tensor], blur_kernel: int):
  """Flip, colour jitter, grayscale, blur and solarize of one (S, S, 3) view of float32
  pixel values in [0, 255], as `view_draws` (`photometric_draws`) says, -> (S, S, 3) uint8.
  One XLA computation: several times faster on the CPU than the same ops run one by one.
  One compile per view size and `blur_kernel`."""
  image = photometric.to_channels_first(view) * (1.0 / 255.0)
  image = tf.where(view_draws["flip"], photometric.flip_left_right(image), image)
  image = photometric.apply_if(view_draws["jitter"], lambda x: photometric.apply_color_jitter(
      x, view_draws["jitter_factors"], view_draws["jitter_order"]), image)
  image = tf.where(view_draws["grayscale"], photometric.grayscale(image), image)
  image = photometric.apply_if(view_draws["blur"], lambda x: photometric.gaussian_blur(
      x, view_draws["blur_sigma"], blur_kernel), image)
  image = tf.where(view_draws["solarize"], photometric.solarize(image), image)
  return photometric.to_uint8(photometric.to_channels_last(image))


def _view_seeds(seed) -> tf.Tensor:
  """A view's (2,) seed -> (7, 2): its crop's, then `photometric_draws`' six. The first six
  are those of randomness.split_seed(seed, 6), which SimCLR's views used before solarize existed
  (stateless_split draws its seeds in order): the seventh leaves their views as they were
  (tests/augmentations_test.py pins them)."""
  return randomness.split_seed(seed, 7)


def simclr_draws(seeds, aug) -> list[dict[str, tf.Tensor]]:
  """The photometric draws of the views `simclr_views` makes with `seeds` (n, 2): view i
  has the settings of view (i mod 2) + 1 (`settings.view_settings`)."""
  both = settings.view_settings(aug)
  return [photometric_draws(_view_seeds(seed)[1:], both[i % 2])
          for i, seed in enumerate(tf.unstack(seeds))]


def simclr_views(image, seeds, aug) -> tf.Tensor:
  """SimCLR (or BYOL) views of one image, one per seed, from one decode of it.

  Args:
    image: (H, W, 3) uint8, or its encoded bytes (JPEG: decoded fused with the crops).
    seeds: (n, 2) int seeds, one per view; a view depends only on its own seed and its
      settings: view i has those of `aug.view1` for even i, `aug.view2` for odd i (the shared
      fields where these are unset; `settings.view_settings`).
    aug: `config.augment` (see configs/default.py).

  Returns:
    (n, aug.image_size, aug.image_size, 3) uint8.
  """
  crop_seeds = tf.stack([_view_seeds(seed)[0] for seed in tf.unstack(seeds)])
  cropped = cropping.random_resized_crops(image, crop_seeds, aug.image_size,
                                       aug.crop_area_range, aug.crop_ratio_range,
                                       aug.resize_antialias)
  blur_kernel = settings.blur_kernel_size(aug.image_size)
  return tf.stack([_photometric_view(crop, view_draws, blur_kernel)
                   for crop, view_draws in zip(cropped, simclr_draws(seeds, aug))])


def crop_flip_view(image, seed, aug) -> tf.Tensor:
  """The linear-evaluation training view (SimCLR protocol): random resized crop and
  horizontal flip only. (H, W, 3) uint8 or encoded bytes -> (S, S, 3) uint8."""
  seeds = randomness.split_seed(seed, 2)
  view = cropping.random_resized_crop(image, seeds[0], aug.image_size, aug.crop_area_range,
                                   aug.crop_ratio_range, aug.resize_antialias)
  flip = randomness.coin(seeds[1], aug.flip_probability)
  return _photometric_view(view, _flip_only_draws(flip), 1)


def eval_view(image, aug) -> tf.Tensor:
  """Deterministic view: resize the shorter side to size / crop_fraction, centre crop.

  Args:
    image: (H, W, 3) uint8, or its encoded bytes.
    aug: `config.augment`; uses image_size and eval_crop_fraction.

  Returns:
    (aug.image_size, aug.image_size, 3) uint8.
  """
  if image.dtype == tf.string:
    image = cropping.decode_rgb(image)
  size = aug.image_size
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = (size / aug.eval_crop_fraction) / tf.reduce_min(shape)
  new_shape = tf.cast(tf.round(shape * scale), tf.int32)
  new_shape = tf.maximum(new_shape, size)
  view = cropping.resize(image, new_shape[0], new_shape[1], aug.resize_antialias)
  view = tf.image.resize_with_crop_or_pad(view, size, size)
  return photometric.to_uint8(view * (1.0 / 255.0))
