"""simclr_jax: SimCLR in JAX, Flax NNX and optax (see README.md).

`from simclr_jax import load_encoder` gives the pretrained encoder as a callable
(simclr_jax/encoder.py). It is imported on first use, so that importing a submodule (the
TensorFlow-only data package, say) does not load the model code.
"""

__all__ = ["load_encoder"]


def __getattr__(name: str):
  if name == "load_encoder":
    from simclr_jax.encoder import load_encoder  # pylint: disable=g-import-not-at-top
    return load_encoder
  raise AttributeError(f"module 'simclr_jax' has no attribute {name!r}")
