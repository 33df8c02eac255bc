"""The backbone registry: `config.model.name` -> the module that builds that family.

Every backbone maps (B, H, W, 3) images to (B, num_features) float32 features, has a
`num_features` attribute and takes `train` (BatchNorm mode). A family's module provides
`create(model_config, rngs, dtype, conv_algorithm)` and `check_config(config)`; adding one
(a ViT) is a file and a line here.
"""

from __future__ import annotations

from flax import nnx

from simclr_jax import config_checks, precision
from simclr_jax.backbones import patch_conv, resnet

BACKBONES = {"resnet": resnet}


def _family(config):
  name = config.model.name
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
