"""Decoding and the random resized crop: crop windows as torchvision's RandomResizedCrop,
one decode shared by an image's views (a crop-decode of their bounding window for JPEGs),
and the (antialiased) resize to the view size."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from simclr_jax.data.augmentations import randomness


def random_resized_crop_window(seed, height, width, area_range: Sequence[float],
                               ratio_range: Sequence[float], attempts: int = 10):
  """torchvision's RandomResizedCrop.get_params, vectorised over its `attempts` tries.

  The area fraction is uniform in `area_range`, the aspect ratio log-uniform in
  `ratio_range`; the first try that fits is used, else a centre crop with the ratio
  clamped to `ratio_range`.

  Returns:
    int32 (top, left, crop_height, crop_width).
  """
  seeds = randomness.split_seed(seed, 4)
  height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = height_f * width_f
  target_area = area * randomness.uniform(seeds[0], area_range[0], area_range[1], [attempts])
  log_ratio = randomness.uniform(seeds[1], tf.math.log(float(ratio_range[0])),
                       tf.math.log(float(ratio_range[1])), [attempts])
  ratio = tf.exp(log_ratio)
  crop_w = tf.cast(tf.round(tf.sqrt(target_area * ratio)), tf.int32)
  crop_h = tf.cast(tf.round(tf.sqrt(target_area / ratio)), tf.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

  # Fallback: centre crop, ratio clamped to the allowed range.
  in_ratio = width_f / height_f
  fallback_w = tf.where(in_ratio > ratio_range[1],
                        tf.cast(tf.round(height_f * ratio_range[1]), tf.int32), width)
  fallback_h = tf.where(in_ratio < ratio_range[0],
                        tf.cast(tf.round(width_f / ratio_range[0]), tf.int32), height)
  any_fits = tf.reduce_any(fits)
  crop_h = tf.where(any_fits, crop_h[first], fallback_h)
  crop_w = tf.where(any_fits, crop_w[first], fallback_w)
  # Offsets uniform over the valid positions (torch.randint(0, H - h + 1)); centred in fallback.
  u = randomness.uniform(seeds[2], 0.0, 1.0, [2])
  top = tf.cast(tf.floor(u[0] * tf.cast(height - crop_h + 1, tf.float32)), tf.int32)
  left = tf.cast(tf.floor(u[1] * tf.cast(width - crop_w + 1, tf.float32)), tf.int32)
  top = tf.where(any_fits, tf.minimum(top, height - crop_h), (height - crop_h) // 2)
  left = tf.where(any_fits, tf.minimum(left, width - crop_w), (width - crop_w) // 2)
  return top, left, crop_h, crop_w


def decode_rgb(image_bytes) -> tf.Tensor:
  """Encoded JPEG/PNG/GIF/BMP bytes -> (H, W, 3) uint8; grayscale and alpha become RGB."""
  return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def crop_windows(seeds, height, width, area_range, ratio_range) -> tf.Tensor:
  """(n, 2) seeds -> (n, 4) int32 RandomResizedCrop windows (top, left, height, width)."""
  return tf.stack([tf.stack(random_resized_crop_window(seed, height, width, area_range,
                                                       ratio_range))
                   for seed in tf.unstack(seeds)])


def bounding_window(windows) -> tf.Tensor:
  """(n, 4) windows -> (4,) the smallest window (top, left, height, width) holding them."""
  top, left = tf.reduce_min(windows[:, 0]), tf.reduce_min(windows[:, 1])
  bottom = tf.reduce_max(windows[:, 0] + windows[:, 2])
  right = tf.reduce_max(windows[:, 1] + windows[:, 3])
  return tf.stack([top, left, bottom - top, right - left])


def decode_for_crops(image, seeds, area_range, ratio_range):
  """Samples one RandomResizedCrop window per seed and decodes what they need, once.

  JPEG bytes: only the bounding window of all the crop windows is decoded, fused with the
  crop (tf.image.decode_and_crop_jpeg, windows sampled from the shape in the header). One
  such decode per image is cheaper than one per view: the entropy decoding up to the
  window's last row, which a crop-decode cannot skip, is paid once. Other formats are
  decoded whole; decoded images are used as they are.

  Args:
    image: (H, W, 3) uint8, or its encoded bytes.
    seeds: (n, 2) one seed per window.

  Returns:
    region: (h, w, 3) uint8, the decoded part of the image.
    windows: (n, 4) int32 crop windows (top, left, height, width) within `region`.
  """
  def windows_in(shape):
    return crop_windows(seeds, shape[0], shape[1], area_range, ratio_range)

  image = tf.convert_to_tensor(image)
  if image.dtype != tf.string:
    return image, windows_in(tf.shape(image))

  def decode_jpeg_region():
    windows = windows_in(tf.image.extract_jpeg_shape(image))
    bounds = bounding_window(windows)
    region = tf.image.decode_and_crop_jpeg(image, bounds, channels=3)
    return region, windows - tf.stack([bounds[0], bounds[1], 0, 0])

  def decode_whole():
    decoded = decode_rgb(image)
    return decoded, windows_in(tf.shape(decoded))

  return tf.cond(tf.io.is_jpeg(image), decode_jpeg_region, decode_whole)


def random_resized_crops(image, seeds, size: int, area_range, ratio_range,
                         antialias: bool = True) -> list[tf.Tensor]:
  """One random resized crop per seed, from one decode of `image` (`decode_for_crops`).

  Args:
    image: (H, W, 3) uint8, or its encoded bytes.
    seeds: (n, 2) one seed per crop.

  Returns:
    n crops, each (size, size, 3) float32 pixel values in [0, 255].
  """
  region, windows = decode_for_crops(image, seeds, area_range, ratio_range)
  crops = []
  for window in tf.unstack(windows, num=seeds.shape[0]):
    top, left, height, width = tf.unstack(window, num=4)
    crops.append(resize(region[top:top + height, left:left + width], size, size, antialias))
  return crops


def random_resized_crop(image, seed, size: int, area_range, ratio_range,
                        antialias: bool = True) -> tf.Tensor:
  """One random resized crop (seed (2,)) -> (size, size, 3) float32 in [0, 255]."""
  return random_resized_crops(image, seed[None], size, area_range, ratio_range, antialias)[0]


def resize(image, height: int, width: int, antialias: bool = True):
  """Bilinear resize of a uint8 (or float) image to float32 on the same scale (0-255 for
  uint8), antialiased (as PIL and torchvision) or not (as big_vision and TF SimCLR).

  Both filters' weights are convex, so the result stays in the input's range. uint8 goes
  into the resize kernel as it is (a float copy of the larger input would cost a pass).
  The antialiased resize runs one axis at a time (`_antialiased_resize_rows`): the same
  result as `tf.image.resize(..., antialias=True)`, bit for bit, in under half the time.
  Antialiasing widens the filter only when shrinking: an image enlarged along both axes
  takes plain bilinear, which then has the same weights (equal to float rounding).
  """
  if not antialias:
    return tf.image.resize(image, (height, width), method="bilinear")
  shape = tf.shape(image)
  shrinks = (shape[0] > height) | (shape[1] > width)
  return tf.cond(shrinks, lambda: _antialiased_resize(image, height, width),
                 lambda: tf.image.resize(image, (height, width), method="bilinear"))


def _antialiased_resize(image, height: int, width: int):
  """(H, W, C) -> (height, width, C) float32: tf.image.resize(antialias=True), per axis."""
  rows_done = _antialiased_resize_rows(image, height)                  # (height, W, C)
  columns_first = _antialiased_resize_rows(tf.transpose(rows_done, [1, 0, 2]), width)
  return tf.transpose(columns_first, [1, 0, 2])                         # (height, width, C)


def _antialiased_resize_rows(image, height: int):
  """(H, W, C) -> (height, W, C) float32: the antialiased bilinear resize of axis 0 only.

  Why: TF's ScaleAndTranslate kernel loops over channels innermost, which for C=3 does
  not vectorise. Seen as one (H, 1) image with W*C channels, the same filter runs over long
  contiguous rows. Resizing rows then columns is the order the joint op uses, so the
  result is the same bit for bit (tests/augmentations_test.py).
  """
  shape = tf.shape(image)
  flat = tf.reshape(image, [1, shape[0], 1, shape[1] * shape[2]])
  resized = tf.image.resize(flat, (height, 1), method="bilinear", antialias=True)
  return tf.reshape(resized, [height, shape[1], shape[2]])
