"""The input side: sources, augmentations and tf.data pipelines (the only package that
imports TensorFlow; it imports no JAX model code). It meets the model at
`input_pipeline.global_batches` (host batches to global jax.Arrays)."""
