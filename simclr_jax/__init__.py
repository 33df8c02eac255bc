"""simclr_jax: SimCLR in JAX, Flax NNX and optax (see README.md)."""
