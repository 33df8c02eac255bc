"""Generates tests/support/files/augment_views_pin.npz with the augmentations before per-view
settings and solarize (commit 2025c42): 4 small JPEGs and, for each existing config, the
SHA-256 of its first pretraining batch (the small views whole). Run from the repository
root: .venv/bin/python tests/support/files/make_augment_views_pin.py"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.getcwd())
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

from simclr_jax.data import input_pipeline  # pylint: disable=wrong-import-position

input_pipeline.configure_tensorflow()  # As tests/conftest.py.
from tests.data import augmentations_test  # pylint: disable=wrong-import-position

rng = np.random.default_rng(20)
jpegs = []
for i in range(4):  # Smooth colour fields plus noise: something like a photo, 60x80.
  coarse = rng.uniform(0, 255, (6, 8, 3))
  image = tf.image.resize(coarse[None], (60, 80), method="bicubic")[0].numpy()
  image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
  jpegs.append(tf.io.encode_jpeg(image, quality=90).numpy())
views = augmentations_test.pin_views(jpegs)
out = {f"jpeg_{i}": np.frombuffer(j, np.uint8) for i, j in enumerate(jpegs)}
for name, value in views.items():
  out[f"sha256/{name}"] = np.array(augmentations_test.views_digest(value))
  if value.shape[2] <= 16:
    out[f"views/{name}"] = value
np.savez_compressed(os.path.join("tests", "support", "files", "augment_views_pin.npz"), **out)
print({k: v.shape for k, v in out.items()})
