"""The backbone registry: `config.model.name` -> the module that builds that family.

Every backbone maps (B, H, W, 3) images to (B, num_features) float32 features, has a
`num_features` attribute and is called as `encoder(images, train, rngs=None)` (BatchNorm's
mode; the randomness of stochastic layers such as the ViT's drop-path, which run only with
both); what a family's module provides is backbones/contract.py. Adding one is a file and
a line here: export, `load_encoder` and every stage reach it only through the functions
below.
"""

from __future__ import annotations

import functools
from typing import Callable

from flax import nnx

from simclr_jax import config_checks, precision
from simclr_jax.backbones import contract, patch_conv, resnet, vit

BACKBONES = {"resnet": resnet, "vit": vit}


def _family(config):
  return _family_of(config.model)


def _family_of(model_config):
  name = model_config.name
  config_checks.require(name in BACKBONES,
                        f"model.name must be one of {sorted(BACKBONES)}, got {name!r}.")
  return BACKBONES[name]


def create(config, rngs: nnx.Rngs) -> nnx.Module:
  """The backbone `config.model` describes, computing in `config.compute_dtype` with
  `config.conv_algorithm`'s convolutions (neither changes the parameters)."""
  return _family(config).create(config.model, rngs, precision.compute_dtype(config),
                                conv_algorithm=config.get("conv_algorithm", "xla"))


def check_config(config) -> None:
  """Raises ConfigError for a backbone config that cannot work."""
  algorithm = config.get("conv_algorithm", "xla")
  config_checks.require(algorithm in patch_conv.ALGORITHMS,
                        f"conv_algorithm must be one of {list(patch_conv.ALGORITHMS)}, got "
                        f"{algorithm!r}.")
  _family(config).check_config(config)


def describe(model_config) -> str:
  """What the backbone `model_config` describes is (e.g. 'resnet50'), for logs and files."""
  return _family_of(model_config).describe(model_config)


def model_fields(model_config) -> tuple[str, ...]:
  """The dotted config names (prefixes) that shape the backbone's parameters: its family's,
  else all of `config.model`."""
  family = _family_of(model_config)
  if not hasattr(family, "model_fields"):
    return ("model.",)
  return tuple(family.model_fields(model_config))


def pytorch_weights(model_config, params, batch_stats, step: int,
                    image_size: int) -> contract.PyTorchWeights | str:
  """The encoder's weights (its params and batch_stats) as a PyTorch model's state_dict
  for images of `image_size` px, or the sentence saying why PyTorch has no model of these
  layers."""
  family = _family_of(model_config)
  if not hasattr(family, "pytorch_weights"):
    return f"PyTorch has no model of the '{model_config.name}' backbone's layout."
  return family.pytorch_weights(model_config, params, batch_stats, step, image_size)


def num_layers(model_config) -> int:
  """The id of the last layer of a backbone with layers, its number of blocks + 1 (a ViT's
  depth + 1, MAE's num_layers), for layer-wise learning-rate decay; ConfigError for a
  family without layers."""
  return _layered_family(model_config).num_layers(model_config)


def layer_of(model_config) -> Callable[[str], int]:
  """The family's `layer_of(model_config, path)` for this config: an encoder parameter's
  '/'-joined path (e.g. 'blocks/3/attn/qkv/kernel') -> its layer id, 0 for the embeddings,
  i + 1 for block i, `num_layers` for what follows the last block. ConfigError for a
  family without layers."""
  return functools.partial(_layered_family(model_config).layer_of, model_config)


def _layered_family(model_config):
  family = _family_of(model_config)
  if not (hasattr(family, "layer_of") and hasattr(family, "num_layers")):
    layered = sorted(name for name, module in BACKBONES.items()
                     if hasattr(module, "layer_of") and hasattr(module, "num_layers"))
    raise config_checks.ConfigError(
        f"finetune.optimizer.layer_decay needs a backbone with layers "
        f"({', '.join(layered) or 'none is registered'}); '{model_config.name}' has none: "
        f"set it to 1.")
  return family
