"""simclr_jax: SimCLR in JAX, Flax NNX and optax (see README.md)."""

from simclr_jax.encoder import load_encoder

__all__ = ["load_encoder"]
