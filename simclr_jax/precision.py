"""The dtype policy and the model's input: what computes in which precision.

Mixed precision ('bfloat16'): convolutions and dense layers compute in bfloat16, while
parameters, optimiser state, BatchNorm statistics, features and every loss stay float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simclr_jax import config_checks

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_compute_dtype(config) -> None:
  config_checks.require(config.compute_dtype in COMPUTE_DTYPES,
                        f"compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got "
                        f"{config.compute_dtype!r}.")


def compute_dtype(config) -> jnp.dtype:
  """The dtype `config.compute_dtype` names."""
  return COMPUTE_DTYPES[config.compute_dtype]


def to_model_input(images: jax.Array, normalize: bool) -> jax.Array:
  """uint8 (..., H, W, 3) images from the input pipeline -> float32 model input in [0, 1],
  or normalised with the ImageNet mean and std (torchvision's ToTensor + Normalize). Runs
  inside the jit-compiled steps, on the accelerator: the one place where the input
  pipeline's batches become model input."""
  images = images.astype(jnp.float32) / 255.0
  if normalize:
    images = (images - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)
  return images
