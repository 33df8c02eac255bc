"""What a backbone family is to the rest of the project (the registry in __init__.py).

A family is one module with:
  create(model_config, rngs, dtype, conv_algorithm) -> nnx.Module, called as
    `encoder(images, train, rngs=None)`: (B, H, W, 3) images -> (B, num_features) float32
    features, with a `num_features` attribute, computing in `dtype` with float32
    parameters. `train`: training mode (BatchNorm's batch statistics). `rngs`: an
    nnx.Rngs with a 'dropout' stream, or None: the randomness of stochastic layers (the
    ViT's drop-path), which run only when `train` and `rngs` are both given, so that
    train=True without `rngs` is training mode without them (EMA target networks; the
    training steps give `rngs` to the online network only). A family without stochastic
    layers takes `rngs` and ignores it;
  check_config(config): ConfigError for a `config.model` it cannot build;
  describe(model_config) -> str: what it is, for logs, `repr(load_encoder(...))` and
    encoder.json;
  model_fields(model_config) (optional) -> the dotted config names that shape its
    parameters (a checkpoint restores only into a config that agrees on them; default:
    all of `config.model`);
  pytorch_weights(model_config, params, batch_stats, step, image_size) (optional) ->
    PyTorchWeights for images of `image_size` px, or a sentence saying why PyTorch has no
    such model: how export writes its weights.
  num_layers(model_config) -> int and layer_of(model_config, path) -> int (optional, both
    or neither): for layer-wise learning-rate decay (finetune.optimizer.layer_decay), the
    number of blocks + 1 (MAE's num_layers), and the layer id of an encoder parameter's
    '/'-joined path relative to the encoder ('blocks/3/attn/qkv/kernel' -> 4): 0 for the
    embeddings (patch embedding, class token, position embedding), i + 1 for block i,
    num_layers for what follows the last block (the final norm), as MAE's
    get_layer_id_for_vit (util/lr_decay.py:64-76).
Export, `load_encoder` and every stage reach a family only through the registry.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class PyTorchWeights:
  """A backbone's weights as a PyTorch model's state_dict.

  library: the Python package of the model (also export's layout name), e.g. 'torchvision';
  constructor: Python that builds the model, e.g. 'torchvision.models.resnet50()';
  head: the model's classifier attribute, absent from `tensors` and replaced by Identity
    to give features, or None when the constructor builds it without one (timm's
    num_classes=0); tensors: {state_dict key: array} without the head;
  details: what encoder.json says of the model beside the constructor (e.g. timm's model
    name, head count and pooling); empty for none.
  """
  library: str
  constructor: str
  head: str | None
  tensors: dict[str, np.ndarray]
  details: dict[str, Any] = dataclasses.field(default_factory=dict)
