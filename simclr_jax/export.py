"""The export stage: the pretrained encoder for use outside this project.

`--mode=export` (`export_encoder`) writes the encoder's weights as safetensors and what is
needed to use them as JSON:

  workdir/export/encoder.safetensors   float32 tensors (BatchNorm step counts int64)
  workdir/export/encoder.json          layout, architecture, input preprocessing, loading

An encoder torchvision has (a ResNet-18/34/50/101/152 at width 1 with the ImageNet stem)
is written with torchvision's names and layouts (OIHW kernels), so that
`torchvision.models.resnet50().load_state_dict(tensors, strict=False)` misses only `fc` and
gives this project's features: to float32 rounding for an encoder pretrained in float32, to
bfloat16 rounding for one pretrained with compute_dtype bfloat16 (`load_encoder` computes
in it, torchvision in float32; encoder.json's `agreement` says which). Other encoders keep the project's names ('/'-joined module
paths such as `blocks/0/bn1/mean`) and HWIO kernels (`"layout": "simclr_jax"`).

`--mode=extract_features` (`extract_features`) writes the frozen encoder's features of
whole splits, every example once, as NumPy arrays:

  workdir/features/<split>_features.npy  (n, F) float32
  workdir/features/<split>_labels.npy    (n,) int32
  workdir/features/features.json         splits, counts, checkpoint step

Both read the pretraining checkpoint in `config.export.pretrain_workdir` (default: the
workdir) at `config.export.checkpoint_step` (default: the newest readable one). Only
process 0 writes; every path goes through `storage` (local or gs://).
"""

from __future__ import annotations

import io
import re
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from absl import logging

from simclr_jax import (config_checks, encoder as encoder_lib, encoding, precision, state,
                        storage, summaries)
from simclr_jax.backbones import resnet
from simclr_jax.data import input_pipeline

EXPORT_DIR = "export"
WEIGHTS_FILE = "encoder.safetensors"
METADATA_FILE = "encoder.json"
FEATURES_DIR = "features"
TORCHVISION, SIMCLR_JAX = "torchvision", "simclr_jax"
# This project's BatchNorm variables -> torchvision's BatchNorm2d names.
BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


# --------------------------------------------------------------------------- the weights


def torchvision_mismatch(model_config) -> str | None:
  """None when torchvision's `resnet{depth}` has exactly this encoder's layers, else why
  not (one sentence)."""
  if model_config.name != "resnet":
    return f"torchvision has no '{model_config.name}' backbone of this project's layout."
  if model_config.depth not in resnet.STAGE_SIZES:
    return f"torchvision has no ResNet-{model_config.depth}."
  if model_config.width_multiplier != 1.0:
    return (f"width_multiplier={model_config.width_multiplier}: torchvision's ResNets are "
            f"width 1 (its wide_resnet* widen only the bottleneck's inner layers).")
  if model_config.small_image_stem:
    return ("the small-image stem (3x3 stride-1 convolution, no max-pool) is not "
            "torchvision's (7x7 stride-2 convolution and 3x3 max-pool).")
  return None


def torchvision_name_table(depth: int) -> list[tuple[tuple[Any, ...], str, str]]:
  """(this project's module path, torchvision's module name, 'conv' or 'bn') for every
  layer of torchvision's `resnet{depth}` but `fc`, following its ResNet._make_layer: a
  stage's first block has a `downsample` (1x1 conv, BatchNorm) when it is strided or
  changes the width."""
  bottleneck = depth in resnet.BOTTLENECK_DEPTHS
  expansion, num_convs = (4, 3) if bottleneck else (1, 2)
  table = [(("stem_conv",), "conv1", "conv"), (("stem_bn",), "bn1", "bn")]
  in_planes, index = 64, 0
  for stage, num_blocks in enumerate(resnet.STAGE_SIZES[depth]):
    planes = 64 * 2**stage
    for block in range(num_blocks):
      prefix, path = f"layer{stage + 1}.{block}", ("blocks", index)
      for k in range(1, num_convs + 1):
        table += [((*path, f"conv{k}"), f"{prefix}.conv{k}", "conv"),
                  ((*path, f"bn{k}"), f"{prefix}.bn{k}", "bn")]
      strides = 2 if stage > 0 and block == 0 else 1
      if block == 0 and (strides != 1 or in_planes != planes * expansion):
        table += [((*path, "shortcut", "conv"), f"{prefix}.downsample.0", "conv"),
                  ((*path, "shortcut", "bn"), f"{prefix}.downsample.1", "bn")]
      in_planes, index = planes * expansion, index + 1
  return table


def _get(tree, path: tuple[Any, ...]):
  for key in path:
    tree = tree[key]
  return tree


def torchvision_state_dict(params, batch_stats, depth: int, step: int) -> dict[str, np.ndarray]:
  """The encoder's params and batch_stats (this project's nested dicts) as torchvision's
  `resnet{depth}` state_dict without `fc`: conv kernels (kh, kw, in, out) -> weight
  (out, in, kh, kw); BatchNorm scale, bias, mean, var -> weight, bias, running_mean,
  running_var (C,) float32, and num_batches_tracked () int64 = `step`."""
  tensors = {}
  for path, name, kind in torchvision_name_table(depth):
    if kind == "conv":
      kernel = np.asarray(_get(params, path)["kernel"], np.float32)
      tensors[f"{name}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
      continue
    variables = {**_get(params, path), **_get(batch_stats, path)}
    for ours, theirs in BN_NAMES.items():
      tensors[f"{name}.{theirs}"] = np.asarray(variables[ours], np.float32)
    tensors[f"{name}.num_batches_tracked"] = np.array(step, np.int64)
  return tensors


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


def encoder_tensors(encoder: encoder_lib.Encoder) -> tuple[str, dict[str, np.ndarray]]:
  """(layout, {name: array}) of a loaded encoder: torchvision's when it has the encoder."""
  model_config = encoder.config.model
  if torchvision_mismatch(model_config) is None:
    return TORCHVISION, torchvision_state_dict(encoder.params, encoder.batch_stats,
                                               model_config.depth, encoder.step)
  return SIMCLR_JAX, flat_state_dict(encoder.params, encoder.batch_stats)


# --------------------------------------------------------------------------- the metadata


def architecture(model_config) -> str:
  """'resnet50', or a description for encoders torchvision lacks."""
  name = f"{model_config.name}{model_config.depth}"
  if torchvision_mismatch(model_config) is None:
    return name
  stem = ("small-image stem (3x3 stride-1 convolution, no max-pool)"
          if model_config.small_image_stem else "ImageNet stem (7x7 stride-2 convolution, "
          "3x3 stride-2 max-pool)")
  width = max(1, int(round(64 * model_config.width_multiplier)))
  return f"{name}, width x{model_config.width_multiplier} ({width} stem channels), {stem}"


def normalization(config) -> dict[str, Any]:
  """{'enabled', 'mean', 'std'}: the per-channel normalisation after scaling to [0, 1]
  (mean 0 and std 1 when the encoder was pretrained on raw [0, 1] input)."""
  enabled = bool(config.augment.normalize)
  return {"enabled": enabled,
          "mean": list(precision.IMAGENET_MEAN) if enabled else [0.0, 0.0, 0.0],
          "std": list(precision.IMAGENET_STD) if enabled else [1.0, 1.0, 1.0]}


def pytorch_lines(layout: str, arch: str, norm: dict[str, Any], num_features: int) -> list[str]:
  """Python lines that load encoder.safetensors in PyTorch and, for torchvision's layout,
  compute the features of (B, H, W, 3) uint8 RGB `images`."""
  if layout == SIMCLR_JAX:
    return ["from safetensors.torch import load_file",
            "tensors = load_file('encoder.safetensors')  # this project's names; kernels HWIO",
            "stem = tensors['stem_conv/kernel'].permute(3, 2, 0, 1)  # HWIO -> torch's OIHW",
            "# No torchvision model has this layout: in JAX, "
            "simclr_jax.load_encoder(<pretraining workdir>)(images) gives the features."]
  return ["import torch, torchvision",
          "from safetensors.torch import load_file",
          f"model = torchvision.models.{arch}()",
          "missing, unexpected = model.load_state_dict(load_file('encoder.safetensors'), "
          "strict=False)",
          "assert sorted(missing) == ['fc.bias', 'fc.weight'] and not unexpected",
          f"model.fc = torch.nn.Identity()  # (B, 3, H, W) -> (B, {num_features}) features",
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


def encoder_metadata(encoder: encoder_lib.Encoder, layout: str) -> dict[str, Any]:
  """encoder.json's content: what the weights are and how to feed them."""
  config, model_config = encoder.config, encoder.config.model
  arch, norm = architecture(model_config), normalization(config)
  reason = torchvision_mismatch(model_config)
  return {
      "layout": layout,
      "layout_reason": (f"torchvision.models.{arch} has this encoder's layers: its names and "
                        f"OIHW kernels." if reason is None else
                        f"This project's names and HWIO kernels, because {reason}"),
      "architecture": arch,
      "depth": model_config.depth,
      "width_multiplier": model_config.width_multiplier,
      "small_image_stem": bool(model_config.small_image_stem),
      "image_size": config.augment.image_size,
      "num_features": encoder.num_features,
      "method": config.method,
      "checkpoint_step": encoder.step,
      "pretraining_compute_dtype": config.compute_dtype,
      "normalize": norm,
      "agreement": agreement(config.compute_dtype),
      "input": ("RGB uint8 / 255, then (x - mean) / std per channel, NCHW for torchvision "
                "(NHWC in JAX); images of image_size px, as in pretraining."),
      "pytorch": pytorch_lines(layout, arch, norm, encoder.num_features),
      "jax": ["from simclr_jax import load_encoder",
              f"encoder = load_encoder({str(encoder.workdir)!r})",
              "features = encoder(images)  # (B, H, W, 3) uint8 RGB -> (B, F) float32"],
  }


def export_encoder(config, workdir: str) -> dict[str, Any]:
  """Runs the export stage: writes workdir/export/encoder.safetensors and encoder.json for
  the pretrained encoder (config.export); returns and writes export.json."""
  pretrain_workdir = config.export.pretrain_workdir or workdir
  encoder = encoder_lib.load_encoder(pretrain_workdir, config.export.checkpoint_step)
  layout, tensors = encoder_tensors(encoder)
  metadata = encoder_metadata(encoder, layout)
  folder = storage.path(workdir) / EXPORT_DIR
  weights, json_path = folder / WEIGHTS_FILE, folder / METADATA_FILE
  if jax.process_index() == 0:
    logging.info("Writing %d tensors (%s layout) to %s.", len(tensors), layout, weights)
    header = {"layout": layout, "architecture": metadata["architecture"]}
    if layout == TORCHVISION:
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


# --------------------------------------------------------------------------- the features


def feature_splits(config) -> tuple[str, ...]:
  """config.export.feature_splits, or (train_split, eval_split) when empty."""
  splits = tuple(config.export.feature_splits) or (config.train_split, config.eval_split)
  return tuple(dict.fromkeys(splits))  # Each once, in order.


def file_stem(split: str) -> str:
  """A split name as a file name: 'train[:10%]' -> 'train_10'."""
  return re.sub(r"[^A-Za-z0-9.-]+", "_", split).strip("_.") or "split"


def _check_splits(splits: tuple[str, ...]) -> None:
  stems = [file_stem(split) for split in splits]
  config_checks.require(len(set(stems)) == len(stems),
                        f"export.feature_splits {list(splits)} would share file names "
                        f"{stems}: give splits that differ in their letters or digits.")


def _write_npy(target, array: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.save(buffer, array)
  storage.write_bytes(target, buffer.getvalue())


def extract_features(config, workdir: str) -> dict[str, Any]:
  """Runs the feature extraction stage: for each split of `feature_splits(config)`, the
  pretrained encoder's features of every example (deterministic preprocessing, BatchNorm
  in inference mode) to workdir/features; returns and writes features/features.json."""
  splits = feature_splits(config)
  _check_splits(splits)
  config_checks.check_batch_size("linear_eval.batch_size", config.linear_eval.batch_size)
  state.check_model_config(config)
  input_pipeline.configure_tensorflow()
  mesh = state.create_mesh()
  source = input_pipeline.create_source(config)
  num_probe_classes = state.probe_classes(config, source)
  encode = encoding.make_encoder(state.model_graphdef(config, num_probe_classes),
                                 config.augment.normalize)
  pretrain_workdir = config.export.pretrain_workdir or workdir
  step, model = state.restore_model(config, pretrain_workdir, mesh, num_probe_classes,
                                    config.export.checkpoint_step)
  encoder = encoding.EncoderState(**model)
  folder = storage.path(workdir) / FEATURES_DIR
  written = {}
  for split in splits:
    features, labels = encoding.extract_features(config, encode, encoder, mesh, source, split)
    paths = {kind: folder / f"{file_stem(split)}_{kind}.npy" for kind in ("features", "labels")}
    if jax.process_index() == 0:
      _write_npy(paths["features"], features)
      _write_npy(paths["labels"], labels)
    logging.info("Features of split '%s': %s, written to %s.", split, features.shape,
                 paths["features"])
    written[split] = {"num_examples": int(len(labels)), "features": str(paths["features"]),
                      "labels": str(paths["labels"])}
  summary = {"method": config.method, "checkpoint_step": step,
             "num_features": int(features.shape[1]), "splits": written,
             "pretrain_workdir": str(pretrain_workdir)}
  summaries.write_json(workdir, f"{FEATURES_DIR}/features.json", summary)
  if jax.process_index() == 0:
    print(f"Wrote the features of {', '.join(splits)} (pretraining step {step}) to {folder}.",
          flush=True)
  return summary
