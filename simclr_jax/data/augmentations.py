"""SimCLR (and BYOL) augmentations as small, stateless tf.image functions.

Every random choice comes from an explicit `seed` tensor of shape (2,) (stateless ops), so
an element's views depend only on (config.seed, its position in the stream): the stream is
reproducible and resumable. Semantics follow torchvision, which the seed used:

  RandomResizedCrop(size, scale, ratio) -> RandomHorizontalFlip(p)
  -> RandomApply([ColorJitter(b, c, s, h)], p)  (the four ops in random order)
  -> RandomGrayscale(p) -> GaussianBlur(kernel, sigma in [0.1, 2.0]) (applied with p)
  -> RandomSolarize(threshold 0.5 of [0, 1], p)  (BYOL's; p = 0, off, for SimCLR)
  -> uint8 (as the seed's PIL images; ToTensor and Normalize run on the accelerator,
     `models.image_input`)

The two views may differ in their photometric settings (BYOL's asymmetric views):
`config.augment.view1` and `view2` override the shared fields (`view_settings`).

The views of an image share one decode (`decode_for_crops`: for JPEGs, a crop-decode of
the bounding window of their crops). The uint8 crop is resized to float32 pixel values in
[0, 255]; the photometric ops then work on channels-first (3, H, W) floats in [0, 1], as
one XLA computation per view (`_photometric_view`). Views come out as (S, S, 3) uint8: a
quarter of float32's bytes to batch, prefetch and send to the devices.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import (
  xla as tfxla,  # XLA's optimisation barrier.
)

from simclr_jax import config_checks

GRAYSCALE_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as torchvision and PIL use.


def blur_kernel_size(image_size: int) -> int:
  """The seed's kernel: int(10% of the image size), made odd by adding one if even."""
  kernel = int(0.1 * image_size)
  return kernel + 1 if kernel % 2 == 0 else kernel


def split_seed(seed, num: int) -> tf.Tensor:
  """(2,) seed -> (num, 2) independent seeds."""
  return tf.random.experimental.stateless_split(seed, num)


# ----------------------------------------------------------------------------------------
# Settings: the shared `config.augment` fields, overridden per view.

# The fields `config.augment.view1` and `view2` may set (None: the shared field's value).
PER_VIEW_FIELDS = ("flip_probability", "color_jitter_strength", "color_jitter",
                   "color_jitter_probability", "grayscale_probability", "blur_probability",
                   "blur_sigma_range", "solarize_probability")
PROBABILITY_FIELDS = ("flip_probability", "color_jitter_probability",
                      "grayscale_probability", "blur_probability", "solarize_probability")


@dataclasses.dataclass(frozen=True)
class ViewAugment:
  """The photometric settings of one view, resolved (`view_settings`).

  color_jitter: ColorJitter's (brightness, contrast, saturation, hue).
  """
  flip_probability: float
  color_jitter: tuple[float, float, float, float]
  color_jitter_probability: float
  grayscale_probability: float
  blur_probability: float
  blur_sigma_range: tuple[float, float]
  solarize_probability: float


def strength_jitter(strength: float) -> tuple[float, float, float, float]:
  """SimCLR's colour strength s -> ColorJitter (0.8s, 0.8s, 0.8s, 0.2s)."""
  return (0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)


def _view_settings(aug, overrides) -> ViewAugment:
  """`aug`'s shared fields with the non-None fields of `overrides` (a view block) in their
  place. Colour jitter: the view's explicit color_jitter, else its color_jitter_strength,
  else the shared color_jitter, else the shared strength (the most specific set wins)."""
  overrides = overrides if overrides is not None else {}

  def pick(name, default=None):
    value = overrides.get(name)
    return aug.get(name, default) if value is None else value

  def jitter_of(block):
    if block.get("color_jitter") is not None:
      return tuple(float(x) for x in block["color_jitter"])
    if block.get("color_jitter_strength") is not None:
      return strength_jitter(block["color_jitter_strength"])
    return None

  return ViewAugment(
      flip_probability=pick("flip_probability"),
      color_jitter=jitter_of(overrides) or jitter_of(aug),
      color_jitter_probability=pick("color_jitter_probability"),
      grayscale_probability=pick("grayscale_probability"),
      blur_probability=pick("blur_probability"),
      blur_sigma_range=tuple(pick("blur_sigma_range")),
      solarize_probability=pick("solarize_probability", 0.0))


def view_settings(aug) -> tuple[ViewAugment, ViewAugment]:
  """`config.augment` -> the settings of view 1 and view 2: the shared fields, overridden
  by the set (non-None) fields of `aug.view1` and `aug.view2`. A config without these
  blocks (or without solarize_probability or color_jitter) gives both views the shared
  settings (solarize off)."""
  return (_view_settings(aug, aug.get("view1")), _view_settings(aug, aug.get("view2")))


def check_augment_config(aug) -> None:
  """The one check of `config.augment`: ConfigError (a one-line message naming the field)
  for the crop (0 < low <= high <= 1 of the area, increasing positive ratios), the image
  size, the evaluation crop, and the photometric fields, shared or per view
  (`PER_VIEW_FIELDS`): probabilities in [0, 1], colour strength >= 0, color_jitter four
  numbers >= 0 with the hue <= 0.5 (torchvision's ColorJitter's limit), blur_sigma_range
  0 < low <= high."""
  require = config_checks.require
  low, high = aug.crop_area_range
  require(0 < low <= high <= 1, f"augment.crop_area_range must satisfy 0 < low <= high <= 1, "
          f"got {aug.crop_area_range}.")
  require(0 < aug.crop_ratio_range[0] <= aug.crop_ratio_range[1],
          f"augment.crop_ratio_range must be increasing and positive, got "
          f"{aug.crop_ratio_range}.")
  require(aug.image_size > 0, f"augment.image_size must be positive, got {aug.image_size}.")
  require(0 < aug.eval_crop_fraction <= 1,
          f"augment.eval_crop_fraction must be in (0, 1], got {aug.eval_crop_fraction}.")

  def check(prefix, block, name):
    value = block.get(name)
    field = f"augment.{prefix}{name}"
    if value is None:
      # Unset: the shared value (or the strength).
      require(bool(prefix) or name == "color_jitter", f"{field} must be set, got None.")
    elif name in PROBABILITY_FIELDS:
      require(0 <= value <= 1, f"{field} must be in [0, 1], got {value}.")
    elif name == "color_jitter_strength":
      require(value >= 0, f"{field} must be >= 0, got {value}.")
    elif name == "color_jitter":
      require(len(value) == 4 and all(x >= 0 for x in value) and value[3] <= 0.5,
              f"{field} must be (brightness, contrast, saturation, hue), each >= 0 and hue "
              f"<= 0.5, got {value}.")
    elif name == "blur_sigma_range":
      require(len(value) == 2 and 0 < value[0] <= value[1],
              f"{field} must be (low, high) with 0 < low <= high, got {value}.")

  for name in PER_VIEW_FIELDS:
    if name != "solarize_probability" or name in aug:
      check("", aug, name)
  for view in ("view1", "view2"):
    block = aug.get(view)
    if block is None:
      continue
    unknown = sorted(set(block.keys()) - set(PER_VIEW_FIELDS))
    require(not unknown, f"augment.{view}.{unknown[0] if unknown else ''} is not a per-view "
            f"setting; those are {', '.join(PER_VIEW_FIELDS)}.")
    for name in PER_VIEW_FIELDS:
      check(f"{view}.", block, name)


# ----------------------------------------------------------------------------------------
# Random draws and the crop.


def _uniform(seed, minval, maxval, shape=()):
  return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


def _coin(seed, probability: float) -> tf.Tensor:
  return _uniform(seed, 0.0, 1.0) < probability


def random_resized_crop_window(seed, height, width, area_range: Sequence[float],
                               ratio_range: Sequence[float], attempts: int = 10):
  """torchvision's RandomResizedCrop.get_params, vectorised over its `attempts` tries.

  The area fraction is uniform in `area_range`, the aspect ratio log-uniform in
  `ratio_range`; the first try that fits is used, else a centre crop with the ratio
  clamped to `ratio_range`.

  Returns:
    int32 (top, left, crop_height, crop_width).
  """
  seeds = split_seed(seed, 4)
  height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = height_f * width_f
  target_area = area * _uniform(seeds[0], area_range[0], area_range[1], [attempts])
  log_ratio = _uniform(seeds[1], tf.math.log(float(ratio_range[0])),
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
  u = _uniform(seeds[2], 0.0, 1.0, [2])
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


# ----------------------------------------------------------------------------------------
# Photometric ops. They take channels-first float32 images (3, H, W) in [0, 1]: each colour
# plane is contiguous, which XLA's CPU backend vectorises several times better than
# (H, W, 3). `_photometric_view` compiles the whole chain with XLA.


def materialize(tensor):
  """`tensor` as it is, but computed into its own buffer under XLA (an optimisation
  barrier; outside XLA it does nothing).

  Why: XLA otherwise fuses a producer into each of its consumers. For a value read by
  several output channels or shifted slices, that recomputes it once per reader, or splits
  it into several partial copies. The float operations on each element are the same
  either way (tests/augmentations_test.py checks the values bit for bit).
  """
  return tfxla.optimization_barrier(tensor)[0]


def to_channels_first(image):
  """(H, W, 3) -> (3, H, W)."""
  return tf.transpose(image, [2, 0, 1])


def to_channels_last(image):
  """(3, H, W) -> (H, W, 3)."""
  return tf.transpose(image, [1, 2, 0])


def luma(image):
  """(3, H, W) -> (H, W): ITU-R 601-2 luma."""
  red, green, blue = tf.unstack(image)
  weights = [tf.constant(w, image.dtype) for w in GRAYSCALE_WEIGHTS]
  return weights[0] * red + weights[1] * green + weights[2] * blue


def grayscale(image):
  """(3, H, W) -> (3, H, W) with the luma in every channel."""
  gray = luma(image)
  return tf.stack([gray, gray, gray])


def flip_left_right(image):
  """Mirrors a (3, H, W) image left-right."""
  return tf.reverse(image, [2])


def _apply_if(condition, op, image):
  return tf.cond(condition, lambda: op(image), lambda: image)


def adjust_brightness(image, factor):
  return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image, factor):
  """Blend with the mean of the grayscale image (torchvision's adjust_contrast)."""
  mean = tf.reduce_mean(luma(image))
  return tf.clip_by_value(factor * image + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(image, factor):
  """Blend with the grayscale image (torchvision's adjust_saturation)."""
  return tf.clip_by_value(factor * image + (1.0 - factor) * luma(image)[None], 0.0, 1.0)


def rgb_to_hsv(image):
  """(3, H, W) RGB -> (3, H, W) HSV, hue in [0, 1) (torchvision's _rgb2hsv). Written with
  elementwise max/min, one reciprocal and no floormod: XLA's CPU code for those is
  several times faster than for reductions over the channel axis and floormod."""
  red, green, blue = tf.unstack(image)
  value = tf.maximum(tf.maximum(red, green), blue)
  chroma = value - tf.minimum(tf.minimum(red, green), blue)
  gray = tf.equal(chroma, 0.0)
  saturation = tf.where(gray, 0.0, chroma / tf.where(gray, 1.0, value))
  inverse_chroma = 1.0 / tf.where(gray, 1.0, chroma)
  hue = tf.where(tf.equal(value, red), (green - blue) * inverse_chroma,
                 tf.where(tf.equal(value, green), 2.0 + (blue - red) * inverse_chroma,
                          4.0 + (red - green) * inverse_chroma)) / 6.0
  hue = tf.where(hue < 0.0, hue + 1.0, hue)  # In [-1/6, 5/6] before.
  return tf.stack([hue, saturation, value])


def hsv_to_rgb(image):
  """(3, H, W) HSV, hue in [0, 1) -> RGB. Each channel is v - v * s * clip(min(k, 4 - k),
  0, 1) with k = (n + 6h) mod 6, n = 5, 3, 1 for red, green, blue: torchvision's _hsv2rgb
  without its six-way select (the same piecewise-linear function, cheaper to compute)."""
  hue, saturation, value = tf.unstack(image)
  chroma = value * saturation

  def channel(n: float):
    k = n + 6.0 * hue
    k = tf.where(k >= 6.0, k - 6.0, k)  # mod 6, as n + 6h is in [1, 11).
    return value - chroma * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)

  return tf.stack([channel(5.0), channel(3.0), channel(1.0)])


def adjust_hue(image, delta):
  """Rotates hue by `delta` of a full turn, delta in [-0.5, 0.5] (torchvision's adjust_hue).

  The HSV planes are materialised: fused into the RGB output, their two divisions a pixel
  would run once per output channel (twice the time at 224 px).
  """
  hue, saturation, value = tf.unstack(materialize(rgb_to_hsv(image)))
  hue = hue + delta
  hue = hue - tf.floor(hue)  # mod 1.
  return hsv_to_rgb(tf.stack([hue, saturation, value]))


def jitter_draws(seed, brightness: float, contrast: float, saturation: float, hue: float):
  """torchvision's ColorJitter.get_params: (4,) factors for brightness, contrast and
  saturation uniform in [max(0, 1 - x), 1 + x] and hue in [-h, h]; (4,) a uniform random
  order of the four adjustments."""
  seeds = split_seed(seed, 5)
  factors = tf.stack([
      _uniform(seeds[0], max(0.0, 1.0 - brightness), 1.0 + brightness),
      _uniform(seeds[1], max(0.0, 1.0 - contrast), 1.0 + contrast),
      _uniform(seeds[2], max(0.0, 1.0 - saturation), 1.0 + saturation),
      _uniform(seeds[3], -hue, hue),
  ])
  order = tf.argsort(_uniform(seeds[4], 0.0, 1.0, [4]))  # A uniform random permutation.
  return factors, order


def apply_color_jitter(image, factors, order):
  """The four adjustments with `factors`, in `order` (from `jitter_draws`)."""
  ops = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
  for position in range(4):
    branches = [functools.partial(lambda op, f, x: op(x, f), op, factors[index], image)
                for index, op in enumerate(ops)]
    image = tf.switch_case(order[position], branches)
  return image


def gaussian_kernel_1d(kernel_size: int, sigma):
  """Normalised 1-D Gaussian of `kernel_size` taps (torchvision's _get_gaussian_kernel1d)."""
  half = (kernel_size - 1) / 2.0
  x = tf.linspace(-half, half, kernel_size)
  pdf = tf.exp(-0.5 * tf.square(x / sigma))
  return pdf / tf.reduce_sum(pdf)


# Taps further than this many sigmas from the centre weigh under 6e-7 in all: dropping them
# moves a blurred pixel by under 1e-5 of the [0, 1] range (tests/augmentations_test.py).
BLUR_TRUNCATE_SIGMAS = 5.0


def blur_radii(kernel_size: int) -> list[int]:
  """The kernel radii `gaussian_blur` compiles, smallest first: 2, 4, 6, ... and the full
  `kernel_size // 2`."""
  full = kernel_size // 2
  return sorted({r for r in range(2, full, 2)} | {full})


def blur_radius_index(sigma, kernel_size: int):
  """Index into `blur_radii` of the smallest radius covering BLUR_TRUNCATE_SIGMAS * sigma
  (the full kernel when none smaller does)."""
  radii = blur_radii(kernel_size)
  too_small = tf.cast(tf.constant(radii, tf.float32) < BLUR_TRUNCATE_SIGMAS * sigma, tf.int32)
  return tf.minimum(tf.reduce_sum(too_small), len(radii) - 1)


def gaussian_blur(image, sigma, kernel_size: int):
  """torchvision's gaussian_blur of a (3, H, W) image: separable, reflect padding.

  Why truncated: torchvision's kernel is 10% of the image wide whatever sigma is, but
  sigma <= 2 leaves most of its taps near zero. The blur uses the kernel only out to the
  radius `blur_radius_index` picks (one compiled branch per radius): 13 taps on average instead
  of 23 at 224 px for sigma uniform in [0.1, 2], and no pixel moves by more than 1e-5.
  """
  branches = [functools.partial(_blur_within, image, sigma, radius)
              for radius in blur_radii(kernel_size)]
  return tf.switch_case(blur_radius_index(sigma, kernel_size), branches)


def _blur_within(image, sigma, radius: int):
  """Separable blur of a (3, H, W) image with a (2 * radius + 1)-tap Gaussian, as sums of
  shifted planes: XLA fuses each pass into one loop.

  Each padded image is materialised once: left to itself, XLA splits the reflect padding
  into two padded copies per pass (one per image edge): about 40 us of a 100-230 us blur
  at 224 px.
  """
  size = 2 * radius + 1
  height, width = image.shape[1], image.shape[2]
  kernel = tf.cast(gaussian_kernel_1d(size, sigma), image.dtype)
  padded = materialize(tf.pad(image, [[0, 0], [radius, radius], [0, 0]], mode="REFLECT"))
  image = tf.add_n([kernel[i] * padded[:, i:i + height] for i in range(size)])
  padded = materialize(tf.pad(image, [[0, 0], [0, 0], [radius, radius]], mode="REFLECT"))
  return tf.add_n([kernel[i] * padded[:, :, i:i + width] for i in range(size)])


def blur_draws(seed, probability: float, sigma_range=(0.1, 2.0)):
  """Whether to blur (with `probability`) and sigma, uniform in `sigma_range`."""
  seeds = split_seed(seed, 2)
  return _coin(seeds[0], probability), _uniform(seeds[1], sigma_range[0], sigma_range[1])


def solarize(image, threshold: float = 0.5):
  """Inverts the pixel values >= `threshold` (x -> 1 - x) of an image in [0, 1]: BYOL's
  `solarize`, where(x < 0.5, x, 1 - x). On values k / 255 of uint8 pixels it inverts
  k >= 128 (k -> 255 - k), as torchvision's RandomSolarize(threshold=128) does."""
  return tf.where(image < threshold, image, 1.0 - image)


def to_uint8(image):
  """[0, 1] floats -> uint8, rounded (as torchvision's PIL images are between its ops)."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)


def photometric_draws(seeds, view: ViewAugment) -> dict[str, tf.Tensor]:
  """Every random choice of the photometric ops of one view with settings `view` (one of
  `view_settings`), from `seeds` (6, 2): flip, whether to jitter, the jitter's factors and
  order, grayscale, blur and its sigma, solarize.

  Drawn outside `_photometric_view` because XLA's random number generators differ from
  TensorFlow's kernels: this way the compiled ops use the draws whose distributions
  tests/augmentations_test.py checks.
  """
  factors, order = jitter_draws(seeds[2], *view.color_jitter)
  blur, sigma = blur_draws(seeds[4], view.blur_probability, view.blur_sigma_range)
  return {"flip": _coin(seeds[0], view.flip_probability),
          "jitter": _coin(seeds[1], view.color_jitter_probability),
          "jitter_factors": factors, "jitter_order": order,
          "grayscale": _coin(seeds[3], view.grayscale_probability),
          "blur": blur, "blur_sigma": sigma,
          "solarize": _coin(seeds[5], view.solarize_probability)}


def _flip_only_draws(flip) -> dict[str, tf.Tensor]:
  """`photometric_draws` that flip (or not) and change nothing else."""
  false = tf.constant(False)
  return {"flip": flip, "jitter": false, "jitter_factors": tf.constant([1.0, 1.0, 1.0, 0.0]),
          "jitter_order": tf.range(4), "grayscale": false, "blur": false,
          "blur_sigma": tf.constant(1.0), "solarize": false}


@tf.function(jit_compile=True)
def _photometric_view(view, draws: dict[str, tf.Tensor], blur_kernel: int):
  """Flip, colour jitter, grayscale, blur and solarize of one (S, S, 3) view of float32
  pixel values in [0, 255], as `draws` (`photometric_draws`) says, -> (S, S, 3) uint8. One XLA
  computation: several times faster on the CPU than the same ops run one by one. One
  compile per view size and `blur_kernel`."""
  image = to_channels_first(view) * (1.0 / 255.0)
  image = tf.where(draws["flip"], flip_left_right(image), image)
  image = _apply_if(draws["jitter"], lambda x: apply_color_jitter(
      x, draws["jitter_factors"], draws["jitter_order"]), image)
  image = tf.where(draws["grayscale"], grayscale(image), image)
  image = _apply_if(draws["blur"], lambda x: gaussian_blur(x, draws["blur_sigma"],
                                                           blur_kernel), image)
  image = tf.where(draws["solarize"], solarize(image), image)
  return to_uint8(to_channels_last(image))


def _view_seeds(seed) -> tf.Tensor:
  """A view's (2,) seed -> (7, 2): its crop's, then `photometric_draws`' six. The first six
  are those of split_seed(seed, 6), which SimCLR's views used before solarize existed
  (stateless_split draws its seeds in order): the seventh leaves their views as they were
  (tests/augmentations_test.py pins them)."""
  return split_seed(seed, 7)


def simclr_draws(seeds, aug) -> list[dict[str, tf.Tensor]]:
  """The photometric draws of the views `simclr_views` makes with `seeds` (n, 2): view i
  has the settings of view (i mod 2) + 1 (`view_settings`)."""
  settings = view_settings(aug)
  return [photometric_draws(_view_seeds(seed)[1:], settings[i % 2])
          for i, seed in enumerate(tf.unstack(seeds))]


def simclr_views(image, seeds, aug) -> tf.Tensor:
  """SimCLR (or BYOL) views of one image, one per seed, from one decode of it.

  Args:
    image: (H, W, 3) uint8, or its encoded bytes (JPEG: decoded fused with the crops).
    seeds: (n, 2) int seeds, one per view; a view depends only on its own seed and its
      settings: view i has those of `aug.view1` for even i, `aug.view2` for odd i (the shared
      fields where these are unset; `view_settings`).
    aug: `config.augment` (see configs/default.py).

  Returns:
    (n, aug.image_size, aug.image_size, 3) uint8.
  """
  crop_seeds = tf.stack([_view_seeds(seed)[0] for seed in tf.unstack(seeds)])
  crops = random_resized_crops(image, crop_seeds, aug.image_size, aug.crop_area_range,
                               aug.crop_ratio_range, aug.resize_antialias)
  blur_kernel = blur_kernel_size(aug.image_size)
  return tf.stack([_photometric_view(crop, draws, blur_kernel)
                   for crop, draws in zip(crops, simclr_draws(seeds, aug))])


def crop_flip_view(image, seed, aug) -> tf.Tensor:
  """The linear-evaluation training view (SimCLR protocol): random resized crop and
  horizontal flip only. (H, W, 3) uint8 or encoded bytes -> (S, S, 3) uint8."""
  seeds = split_seed(seed, 2)
  view = random_resized_crop(image, seeds[0], aug.image_size, aug.crop_area_range,
                             aug.crop_ratio_range, aug.resize_antialias)
  return _photometric_view(view, _flip_only_draws(_coin(seeds[1], aug.flip_probability)), 1)


def eval_view(image, aug) -> tf.Tensor:
  """Deterministic view: resize the shorter side to size / crop_fraction, centre crop.

  Args:
    image: (H, W, 3) uint8, or its encoded bytes.
    aug: `config.augment`; uses image_size and eval_crop_fraction.

  Returns:
    (aug.image_size, aug.image_size, 3) uint8.
  """
  if image.dtype == tf.string:
    image = decode_rgb(image)
  size = aug.image_size
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = (size / aug.eval_crop_fraction) / tf.reduce_min(shape)
  new_shape = tf.cast(tf.round(shape * scale), tf.int32)
  new_shape = tf.maximum(new_shape, size)
  view = resize(image, new_shape[0], new_shape[1], aug.resize_antialias)
  view = tf.image.resize_with_crop_or_pad(view, size, size)
  return to_uint8(view * (1.0 / 255.0))
