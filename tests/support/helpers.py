"""Shared test helpers: tiny configs (on the registered toy backbone, or a ResNet where the
test is about convolutions), array data sources, parameter counts."""

import jax
import ml_collections
import tensorflow as tf
from flax import nnx

from configs import food101
from simclr_jax import backbones
from tests.support import toy_backbone

# Registered for every test process that imports this module (pytest's and the multi-host
# workers'): a tiny config's backbone, so that the trainer, the stages and the methods are
# tested without compiling convolutions (XLA's CPU convolutions are what made tests slow).
TOY_BACKBONE = "toy_mlp"
backbones.BACKBONES.setdefault(TOY_BACKBONE, toy_backbone)


def tiny_food101_config(**overrides):
  """The food101 config with everything that costs time shrunk, on the toy backbone
  (tests/support/toy_backbone.py: pooled pixels through an MLP, 16 features)."""
  config = food101.get_config()
  config.compute_dtype = "float32"  # Tests compute in float32 unless they set it.
  config.augment.image_size = 16
  config.model = ml_collections.ConfigDict({"name": TOY_BACKBONE,
                                            "hidden": toy_backbone.HIDDEN,
                                            "features": toy_backbone.FEATURES})
  config.simclr.head_widths = (32, 16)
  config.batch_size = 16
  config.num_train_steps = 1
  config.shuffle_buffer = 64
  config.log_every_steps = 1
  config.checkpoint_every_steps = 1
  config.linear_eval.batch_size = 16
  config.linear_eval.epochs = 2
  config.linear_eval.lr_scaling = "none"  # The rate as written, at these tiny batches.
  config.update(overrides)
  return config


def tiny_resnet_config(**overrides):
  """`tiny_food101_config` on a ResNet-18 at 1/16 width with the small-image stem (32
  features): for tests of convolutions, the ResNet's layout or checkpoints made with it."""
  config = tiny_food101_config(**overrides)
  config.model = food101.get_config().model
  config.model.update(depth=18, width_multiplier=0.0625, small_image_stem=True)
  return config


def tiny_vit_config(**overrides):
  """`tiny_food101_config` on the 'mu' ViT (width 64, 4 blocks, 4 heads) with 4 px patches
  at 16 px (16 patches + the class token): for tests of the ViT's layers or its export."""
  return on_tiny_vit(tiny_food101_config(**overrides))


def on_tiny_vit(config):
  """`config` (a tiny one, 16 px) with its backbone replaced by `tiny_vit_config`'s ViT."""
  config.model = food101.get_config().model
  config.model.name = "vit"
  config.model.vit.update(variant="mu", patch_size=4, pos_embed_image_size=16)
  return config


# Test-sized heads per method (the recipes' are thousands wide).
TINY_HEADS = {
    "simclr": {"head_widths": (32, 16)},
    "byol": {"projector_widths": (32, 16), "predictor_widths": (32, 16)},
    "mocov3": {"projector_widths": (32, 32, 16), "predictor_widths": (32, 16)},
    "vicreg": {"expander_widths": (32, 32, 32)},
}


def tiny_method_config(method: str, **overrides):
  """`tiny_food101_config` pretraining `method` with test-sized heads."""
  config = tiny_food101_config(**overrides)
  config.method = method
  config[method].update(TINY_HEADS[method])
  return config


def tiny_vit_method_config(method: str, drop_path_rate: float = 0.0):
  """`tiny_method_config(method)` on the 'mu' ViT at 8 px with 4 px patches (4 patches +
  the class token), no warm-up: for tests of the ViT in training (drop-path)."""
  config = tiny_method_config(method)
  config.model = tiny_vit_config().model
  config.model.vit.update(drop_path_rate=drop_path_rate, pos_embed_image_size=8)
  config.augment.image_size = 8
  config.optimizer.warmup_epochs = 0.0
  return config


def probed_config(method: str):
  """2 steps of `method` with the online probe (conftest's `probed_workdir` runs it)."""
  return tiny_method_config(method, num_train_steps=2, online_probe=True)


def count_params(module: nnx.Module) -> int:
  """Number of trainable (nnx.Param) scalars in `module` (works on abstract modules)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


class ArraySource:
  """A data source over in-memory arrays: images (n, H, W, 3) uint8, labels (n,)."""
  num_classes = 101

  def __init__(self, images, labels):
    self.images, self.labels = images, labels

  def num_examples(self, split):
    del split
    return len(self.labels)

  def local_dataset(self, split, shuffle, seed):
    del split, shuffle, seed
    return tf.data.Dataset.from_tensor_slices({"image": self.images, "label": self.labels})
