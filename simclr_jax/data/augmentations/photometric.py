"""The photometric ops on channels-first float32 (3, H, W) images in [0, 1]: flip, colour
jitter, grayscale, Gaussian blur, solarize, to uint8; each as torchvision's."""

from __future__ import annotations

import functools

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import (
  xla as tfxla,  # XLA's optimisation barrier.
)

from simclr_jax.data.augmentations import randomness

GRAYSCALE_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as torchvision and PIL use.


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


def apply_if(condition, op, image):
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
  seeds = randomness.split_seed(seed, 5)
  factors = tf.stack([
      randomness.uniform(seeds[0], max(0.0, 1.0 - brightness), 1.0 + brightness),
      randomness.uniform(seeds[1], max(0.0, 1.0 - contrast), 1.0 + contrast),
      randomness.uniform(seeds[2], max(0.0, 1.0 - saturation), 1.0 + saturation),
      randomness.uniform(seeds[3], -hue, hue),
  ])
  order = tf.argsort(randomness.uniform(seeds[4], 0.0, 1.0, [4]))  # A uniform random permutation.
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
  seeds = randomness.split_seed(seed, 2)
  sigma = randomness.uniform(seeds[1], sigma_range[0], sigma_range[1])
  return randomness.coin(seeds[0], probability), sigma


def solarize(image, threshold: float = 0.5):
  """Inverts the pixel values >= `threshold` (x -> 1 - x) of an image in [0, 1]: BYOL's
  `solarize`, where(x < 0.5, x, 1 - x). On values k / 255 of uint8 pixels it inverts
  k >= 128 (k -> 255 - k), as torchvision's RandomSolarize(threshold=128) does."""
  return tf.where(image < threshold, image, 1.0 - image)


def to_uint8(image):
  """[0, 1] floats -> uint8, rounded (as torchvision's PIL images are between its ops)."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
