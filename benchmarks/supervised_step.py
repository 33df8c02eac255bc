"""Times a supervised ResNet training step on the same chip: the baseline the SimCLR step is
read against, and MLPerf's ResNet-50 figure beside it.

    python benchmarks/supervised_step.py [--config=configs/food101.py] [--batch_per_device=256]
        [--image_size=224] [--steps=20] [--warmup=3] [--classes=1000] [--config.x=...]

The config's backbone (`backbones.create`: ResNet-50, bfloat16 for configs/food101.py) and a
linear classifier on its pooled features, softmax cross-entropy, SGD with momentum 0.9 and
weight decay (optax), uint8 images normalised on the device with the ImageNet mean and std
(`precision.to_model_input`), state replicated and donated, images sharded on 'data'
(simclr_jax/sharding.py). Built here from the project's pieces, not in the package: nothing
trains this way. Prints one JSON line:

  {"what": "supervised resnet step", "model" (e.g. 'resnet50'), "compute_dtype",
   "device_kind", "device_count", "global_batch", "image_size", "steps", "images_per_s"
   (over --steps steps dispatched back to back, one block at the end), "step_s",
   "compile_s", "flops_per_step_per_device", "peak_flops", "mfu", "runtime_peak_bytes",
   "loss_finite", "mlperf_h200_images_per_s", "ratio_to_mlperf" (images/s per device over
   it; null unless ResNet-50 at 224 px)}

MLPerf's figure: about 7,950 images/s per H200 (the figure issue 27 gives; not verified
here: MLPerf Training reports time to train, not images/s). The nearest published figure
found: MLPerf Training v3.0, ResNet-50 v1.5 on 8x H100 SXM in 13.466 minutes (MLPerf-ID
3.0-2053, NVIDIA's "AI Training" performance page): at 35-40 epochs of ImageNet's 1.28M
images (assumed; the run's log holds the count), 6,900-7,900 images/s per H100, evaluation
included. MLPerf's code runs MXNet with DALI and cuDNN's fused kernels; XLA compiles this
step from the plain model.

Imports no TensorFlow, TFDS or CLU.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import device_stats
from simclr_jax import backbones, precision, sharding

MLPERF_H200_IMAGES_PER_S = 7950.0

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/food101.py", "The backbone's config.",
                                lock_config=True)
flags.DEFINE_integer("batch_per_device", 256, "Images per device.")
flags.DEFINE_integer("image_size", 224, "Image size.")
flags.DEFINE_integer("classes", 1000, "Classifier outputs (ImageNet's 1,000, as MLPerf).")
flags.DEFINE_integer("steps", 20, "Timed steps, dispatched back to back, one block at the end.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")


class Classifier(nnx.Module):
  """The config's backbone and a linear layer: (B, H, W, 3) -> (B, classes) float32 logits."""

  def __init__(self, config, classes: int, rngs: nnx.Rngs):
    self.backbone = backbones.create(config, rngs)
    self.head = nnx.Linear(self.backbone.num_features, classes, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.head(self.backbone(images, train=True))


def train_step(state, batch, *, graphdef, tx):
  """One SGD update on {'images': (N, H, W, 3) uint8, 'labels': (N,) int32};
  state = (params, batch_stats, opt_state)."""
  params, batch_stats, opt_state = state

  def loss_fn(params):
    model = nnx.merge(graphdef, params, batch_stats)
    logits = model(precision.to_model_input(batch["images"], normalize=True))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    return loss, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return (optax.apply_updates(params, updates), batch_stats, opt_state), {"loss": loss}


def measure(config, batch_per_device: int, image_size: int, classes: int, steps: int,
            warmup: int) -> dict:
  """The step at this batch and size; the JSON line's fields."""
  mesh = sharding.create_mesh()
  global_batch = batch_per_device * jax.device_count()
  graphdef, params, batch_stats = nnx.split(Classifier(config, classes, nnx.Rngs(0)),
                                            nnx.Param, nnx.BatchStat)
  params, batch_stats = nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)
  # MLPerf's reference: SGD, momentum 0.9; weight decay 5e-5 (any value costs the same).
  tx = optax.chain(optax.add_decayed_weights(5e-5), optax.sgd(0.1, momentum=0.9))
  state = jax.device_put((params, batch_stats, tx.init(params)), sharding.replicated(mesh))
  rng = np.random.default_rng(0)
  batch = jax.device_put(
      {"images": rng.integers(0, 256, (global_batch, image_size, image_size, 3), np.uint8),
       "labels": rng.integers(0, classes, (global_batch,), np.int32)},
      sharding.batch_sharded(mesh))
  step = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx),
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                 out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
                 donate_argnums=0)

  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  state, _, _ = device_stats.time_steps(compiled, state, batch, warmup)
  state, metrics, seconds = device_stats.time_steps(compiled, state, batch, steps)
  step_s = seconds / steps
  flops = device_stats.flops(compiled)
  kind = jax.devices()[0].device_kind
  images_per_s = global_batch / step_s
  model = backbones.describe(config.model)
  return {"what": "supervised resnet step", "model": model,
          "compute_dtype": config.compute_dtype, "device_kind": kind,
          "device_count": jax.device_count(), "global_batch": global_batch,
          "image_size": image_size, "classes": classes, "steps": steps,
          "images_per_s": images_per_s, "step_s": step_s, "compile_s": compile_s,
          "flops_per_step_per_device": flops,
          "peak_flops": device_stats.peak_flops(kind, config.compute_dtype),
          "mfu": device_stats.mfu(flops, step_s, kind, config.compute_dtype),
          "runtime_peak_bytes": device_stats.runtime_peak_bytes(),
          "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
          "mlperf_h200_images_per_s": MLPERF_H200_IMAGES_PER_S,
          "ratio_to_mlperf": (images_per_s / jax.device_count() / MLPERF_H200_IMAGES_PER_S
                              if model == "resnet50" and image_size == 224 else None)}


def main(argv):
  del argv
  result = measure(FLAGS.config, FLAGS.batch_per_device, FLAGS.image_size, FLAGS.classes,
                   FLAGS.steps, FLAGS.warmup)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
