"""Encoded images: JPEG decoded fused with the crop equals decode-then-crop; PNG, grayscale
and alpha images become RGB; one code path for decoded arrays and bytes."""

import numpy as np
import tensorflow as tf

from simclr_jax.data.augmentations import cropping, randomness


def _smooth_image(height, width):
  y, x = np.mgrid[0:height, 0:width]
  return np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (height + width)],
                  axis=-1).astype(np.uint8)


def test_fused_jpeg_crop_equals_decode_then_crop():
  image = _smooth_image(120, 160)
  jpeg = tf.io.encode_jpeg(image, quality=95)
  decoded = tf.io.decode_jpeg(jpeg, channels=3)
  for seed in range(5):
    seed = tf.constant([seed, 7], tf.int64)
    seeds = randomness.split_seed(seed, 2)  # Two views, one crop-decode of their bounds.
    fused = cropping.random_resized_crops(jpeg, seeds, 32, (0.08, 1.0), (3 / 4, 4 / 3))
    plain = cropping.random_resized_crops(decoded, seeds, 32, (0.08, 1.0), (3 / 4, 4 / 3))
    for fused_view, plain_view in zip(fused, plain):
      np.testing.assert_allclose(fused_view.numpy(), plain_view.numpy(), atol=2)


def test_png_grayscale_and_alpha_images_become_rgb_views():
  rgb = _smooth_image(40, 50)
  encodings = {
      "png": tf.io.encode_png(rgb),
      "gray_png": tf.io.encode_png(rgb[..., :1]),
      "rgba_png": tf.io.encode_png(np.concatenate([rgb, np.full((40, 50, 1), 128, np.uint8)],
                                                  axis=-1)),
      "gray_jpeg": tf.io.encode_jpeg(rgb[..., :1]),
  }
  seed = tf.constant([1, 2], tf.int64)
  for name, encoded in encodings.items():
    view = cropping.random_resized_crop(encoded, seed, 16, (0.5, 1.0), (3 / 4, 4 / 3))
    assert view.shape == (16, 16, 3), name
    decoded = cropping.decode_rgb(encoded)
    assert decoded.shape == (40, 50, 3) and decoded.dtype == tf.uint8, name
  # The grayscale image decodes to three equal channels.
  gray = cropping.decode_rgb(encodings["gray_png"]).numpy()
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


def test_cmyk_jpeg_decodes_to_its_rgb_colours():
  import io  # pylint: disable=g-import-not-at-top

  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(np.full((20, 30, 3), [200, 50, 10], np.uint8)).convert("CMYK").save(
      buffer, format="JPEG")
  cmyk_jpeg = tf.constant(buffer.getvalue())
  np.testing.assert_allclose(cropping.decode_rgb(cmyk_jpeg).numpy()[10, 15],
                             [200, 50, 10], atol=3)
  view = cropping.random_resized_crop(cmyk_jpeg, tf.constant([0, 1], tf.int64), 8,
                                           (0.5, 1.0), (3 / 4, 4 / 3))
  np.testing.assert_allclose(view.numpy()[4, 4], [200, 50, 10], atol=3)
