"""A toy backbone family (simclr_jax/backbones/contract.py), registered by
tests/support/helpers.py as the tiny configs' backbone: images pooled to 4x4, flattened, then
Linear -> BatchNorm -> ReLU -> Linear. Nothing outside the registry knows it; it has no
PyTorch model. Fields: model.hidden and model.features (defaults HIDDEN, FEATURES)."""

import jax
import jax.numpy as jnp
from flax import nnx

GRID, HIDDEN, FEATURES = 4, 32, 16


class PooledPixelMLP(nnx.Module):
  """(B, H, W, 3) -> (B, FEATURES) float32, any H and W."""

  def __init__(self, *, rngs: nnx.Rngs, dtype=jnp.float32, hidden: int = HIDDEN,
               features: int = FEATURES):
    self.hidden = nnx.Linear(GRID * GRID * 3, hidden, use_bias=False, dtype=dtype, rngs=rngs)
    self.norm = nnx.BatchNorm(hidden, momentum=0.9, dtype=dtype, rngs=rngs)
    # No bias: a head's BatchNorm would cancel it (no gradient), as after a ResNet's pooling.
    self.out = nnx.Linear(hidden, features, use_bias=False, dtype=dtype, rngs=rngs)
    self.num_features = features

  def __call__(self, x: jax.Array, train: bool = True, rngs: nnx.Rngs | None = None
               ) -> jax.Array:
    del rngs  # No stochastic layer.
    x = jax.image.resize(x, (x.shape[0], GRID, GRID, x.shape[-1]), "linear")
    h = nnx.relu(self.norm(self.hidden(x.reshape(x.shape[0], -1)),
                           use_running_average=not train))
    return self.out(h).astype(jnp.float32)


def create(model_config, rngs: nnx.Rngs, dtype=jnp.float32, conv_algorithm: str = "xla"):
  del conv_algorithm  # No convolutions.
  return PooledPixelMLP(rngs=rngs, dtype=dtype, hidden=model_config.get("hidden", HIDDEN),
                        features=model_config.get("features", FEATURES))


def check_config(config) -> None:
  del config


def describe(model_config) -> str:
  return (f"{model_config.name}: {GRID}x{GRID} pooled pixels, MLP "
          f"{model_config.get('hidden', HIDDEN)}-{model_config.get('features', FEATURES)}")
