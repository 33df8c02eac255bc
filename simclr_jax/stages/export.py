"""The export stage: the pretrained encoder for use outside this project.

`--mode=export` (`export_encoder`) writes the encoder's weights as safetensors and what is
needed to use them as JSON:

  workdir/export/encoder.safetensors   float32 tensors (BatchNorm step counts int64)
  workdir/export/encoder.json          layout, architecture, input preprocessing, loading

When the backbone family has a PyTorch model of the encoder's layers
(`backbones.pytorch_weights`; ResNet-18/34/50/101/152 at width 1 with the ImageNet stem:
torchvision's; ViTs: timm's VisionTransformer), the weights are written with its names and
layouts (OIHW kernels, (out, in) dense weights), so that
`torchvision.models.resnet50().load_state_dict(tensors, strict=False)` misses only `fc`
(timm's model, built without a classifier, misses nothing) and gives this project's
features: to float32 rounding for an encoder pretrained in float32, to
bfloat16 rounding for one pretrained with compute_dtype bfloat16 (`load_encoder` computes in
it, PyTorch in float32; encoder.json's `agreement` says which). Other encoders keep the
project's names ('/'-joined module paths such as `blocks/0/bn1/mean`) and HWIO kernels
(`"layout": "simclr_jax"`). No backbone names here: the registry answers.

It reads the pretraining checkpoint in `config.export.pretrain_workdir` (default: the
workdir) at `config.export.checkpoint_step` (default: the newest readable one). Only
process 0 writes; every path goes through `storage` (local or gs://).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import safetensors.numpy
from absl import logging

from simclr_jax import backbones, config_text, precision, storage
from simclr_jax import encoder as encoder_lib
from simclr_jax.training import model as model_lib
from simclr_jax.training import summaries

EXPORT_DIR = "export"
WEIGHTS_FILE = "encoder.safetensors"
METADATA_FILE = "encoder.json"
SIMCLR_JAX = "simclr_jax"  # The layout of encoders PyTorch has no model for.


# --------------------------------------------------------------------------- the weights


def flat_state_dict(params, batch_stats) -> dict[str, np.ndarray]:
  """This project's layout: {'/'-joined module path + variable name: float32 array}, e.g.
  'stem_conv/kernel' (HWIO), 'blocks/0/bn1/scale', 'blocks/0/bn1/mean'."""
  tensors = {}
  for tree in (params, batch_stats):
    for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
      name = "/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)
      if name in tensors:
        raise ValueError(f"{name} is both a parameter and a BatchNorm statistic.")
      tensors[name] = np.asarray(value, np.float32)
  return tensors


def encoder_tensors(encoder: encoder_lib.Encoder):
  """(layout, {name: array}, the PyTorch weights or why there are none) of a loaded encoder:
  the PyTorch library's layout when the backbone family has a PyTorch model of these layers
  (ResNets: torchvision's), else this project's."""
  weights = backbones.pytorch_weights(encoder.config.model, encoder.params,
                                      encoder.batch_stats, encoder.step,
                                      encoder.config.augment.image_size)
  if isinstance(weights, str):
    return SIMCLR_JAX, flat_state_dict(encoder.params, encoder.batch_stats), weights
  return weights.library, weights.tensors, weights


# --------------------------------------------------------------------------- the metadata


def normalization(config) -> dict[str, Any]:
  """{'enabled', 'mean', 'std'}: the per-channel normalisation after scaling to [0, 1]
  (mean 0 and std 1 when the encoder was pretrained on raw [0, 1] input)."""
  enabled = bool(config.augment.normalize)
  return {"enabled": enabled,
          "mean": list(precision.IMAGENET_MEAN) if enabled else [0.0, 0.0, 0.0],
          "std": list(precision.IMAGENET_STD) if enabled else [1.0, 1.0, 1.0]}


def pytorch_lines(weights, norm: dict[str, Any], num_features: int) -> list[str]:
  """Python lines that load encoder.safetensors in PyTorch and, for a PyTorch layout,
  compute the features of (B, H, W, 3) uint8 RGB `images`. `weights`: the backbone's
  PyTorchWeights, or the reason it has none (then this project's layout)."""
  if isinstance(weights, str):
    return ["from safetensors.torch import load_file",
            "tensors = load_file('encoder.safetensors')  # this project's names",
            "# Convolution kernels are HWIO (.permute(3, 2, 0, 1) gives torch's OIHW), dense "
            "kernels (in, out). No PyTorch model has this layout: in JAX, "
            "simclr_jax.load_encoder(<pretraining workdir>)(images) gives the features."]
  head = weights.head
  if head is None:  # The constructor builds it without a classifier: every key loads.
    loading = ["model.load_state_dict(load_file('encoder.safetensors'))  # strict: all keys, "
               f"(B, 3, H, W) -> (B, {num_features}) features"]
  else:
    loading = ["missing, unexpected = model.load_state_dict(load_file('encoder.safetensors'), "
               "strict=False)",
               f"assert sorted(missing) == ['{head}.bias', '{head}.weight'] and not unexpected",
               f"model.{head} = torch.nn.Identity()  # (B, 3, H, W) -> (B, {num_features}) "
               "features"]
  return [f"import torch, {weights.library}",
          "from safetensors.torch import load_file",
          f"model = {weights.constructor}",
          *loading,
          "model.eval()",
          "x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255  # NCHW in [0, 1]",
          f"mean = torch.tensor({norm['mean']}).view(1, 3, 1, 1)",
          f"std = torch.tensor({norm['std']}).view(1, 3, 1, 1)",
          "with torch.no_grad():",
          "  features = model((x - mean) / std)"]


def agreement(compute_dtype: str) -> str:
  """How closely PyTorch's float32 features of the exported weights match load_encoder's."""
  if compute_dtype == "float32":
    return ("PyTorch's float32 features equal load_encoder's to float32 rounding (relative "
            "1e-4 in tests/export_test.py).")
  return (f"load_encoder computes in {compute_dtype}, as pretraining did, and PyTorch in "
          f"float32: the two agree to {compute_dtype} rounding (relative about 1e-2).")


def encoder_metadata(encoder: encoder_lib.Encoder, layout: str, weights) -> dict[str, Any]:
  """encoder.json's content: what the weights are and how to feed them (`layout` and
  `weights` as `encoder_tensors` gives them)."""
  config = encoder.config
  norm = normalization(config)
  metadata = {
      "layout": layout,
      "layout_reason": (f"This project's names and HWIO kernels, because {weights}"
                        if isinstance(weights, str) else
                        f"{weights.constructor} has this encoder's layers: its names and "
                        f"layouts (OIHW kernels, (out, in) dense weights)."),
      "architecture": backbones.describe(config.model),
      "backbone": config.model.to_dict(),
      "image_size": config.augment.image_size,
      "num_features": encoder.num_features,
      "method": config.method,
      "checkpoint_step": encoder.step,
      "pretraining_compute_dtype": config.compute_dtype,
      "normalize": norm,
      "agreement": agreement(config.compute_dtype),
      "input": ("RGB uint8 / 255, then (x - mean) / std per channel, NCHW for PyTorch "
                "(NHWC in JAX); images of image_size px, as in pretraining."),
      "pytorch": pytorch_lines(weights, norm, encoder.num_features),
      "jax": ["from simclr_jax import load_encoder",
              f"encoder = load_encoder({str(encoder.workdir)!r})",
              "features = encoder(images)  # (B, H, W, 3) uint8 RGB -> (B, F) float32"],
  }
  if not isinstance(weights, str) and weights.details:
    metadata["pytorch_model"] = weights.details  # E.g. timm's model name, heads, pooling.
  return metadata


def export_encoder(config, workdir: str) -> dict[str, Any]:
  """Runs the export stage: writes workdir/export/encoder.safetensors and encoder.json for
  the pretrained encoder (config.export); returns and writes export.json."""
  pretrain_workdir = config.export.pretrain_workdir or workdir
  # What is exported is the checkpoint's model: the config file written says so.
  config_text.write(model_lib.config_from_checkpoint(
      config, pretrain_workdir, config.export.checkpoint_step), workdir, "export")
  encoder = encoder_lib.load_encoder(pretrain_workdir, config.export.checkpoint_step)
  layout, tensors, pytorch_weights = encoder_tensors(encoder)
  metadata = encoder_metadata(encoder, layout, pytorch_weights)
  folder = storage.path(workdir) / EXPORT_DIR
  weights, json_path = folder / WEIGHTS_FILE, folder / METADATA_FILE
  if jax.process_index() == 0:
    logging.info("Writing %d tensors (%s layout) to %s.", len(tensors), layout, weights)
    header = {"layout": layout, "architecture": metadata["architecture"]}
    if layout != SIMCLR_JAX:
      header["format"] = "pt"  # What PyTorch tools expect of a state_dict's file.
    storage.write_bytes(weights, safetensors.numpy.save(tensors, metadata=header))
    storage.write_json(json_path, metadata)
  summary = {"layout": layout, "architecture": metadata["architecture"],
             "method": metadata["method"], "checkpoint_step": encoder.step,
             "num_features": encoder.num_features, "num_tensors": len(tensors),
             "num_parameters": int(sum(v.size for k, v in tensors.items()
                                       if not k.endswith("num_batches_tracked"))),
             "pretrain_workdir": str(pretrain_workdir), "weights": str(weights),
             "metadata": str(json_path)}
  summaries.write_json(workdir, "export.json", summary)
  if jax.process_index() == 0:
    print(f"Exported the {metadata['architecture']} encoder ({metadata['method']}, step "
          f"{encoder.step}, {layout} layout) to {weights} and {json_path}.", flush=True)
  return summary
