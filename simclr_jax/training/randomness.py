"""The randomness of a training step's stochastic layers (the ViT's drop-path): a key per
step, folded from the run's key and the step number, so that a resumed run draws the masks
the uninterrupted run drew, and every device count the same ones.

The key is replicated: every device holds all of it. JAX's partitionable Threefry
(`jax_threefry_partitionable`, on by default since JAX 0.5) makes a random array's values
independent of how it is sharded, so the drop-path masks of a batch sharded on 'data' are
one device's masks (tests/training/drop_path_test.py checks 8 devices against 1).
"""

from __future__ import annotations

import jax
from flax import nnx

# Apart from each other, as the data's streams (input_pipeline: 1 pretraining, 2 fine-tuning).
PRETRAIN_STREAM = 1
FINETUNE_STREAM = 2


def run_key(seed_or_key: int | jax.Array, stream: int) -> jax.Array:
  """A run's key for `stream`: from an int seed (config.seed) or a PRNG key (the pretraining
  state's `rng`, PRNGKey(config.seed))."""
  key = (jax.random.key(seed_or_key) if isinstance(seed_or_key, int) else seed_or_key)
  return jax.random.fold_in(key, stream)


def step_rngs(key: jax.Array, step: jax.Array) -> nnx.Rngs:
  """nnx.Rngs whose 'dropout' stream starts at fold_in(key, step): the stochastic layers'
  randomness at `step` (a scalar int32, traced). Each draw (`rngs.dropout()`, one per
  encoder call) is a new key, so two passes of a step get different masks.

  Create it inside the function that draws from it (the loss under jax.grad): an
  nnx.Rngs counts its draws in a Variable, which NNX lets change only in the trace that
  made it."""
  return nnx.Rngs(dropout=jax.random.fold_in(key, step))
