"""Does an exported encoder give this project's features in PyTorch itself? (torch, timm and
torchvision are not dependencies; the tests check the export against NumPy forward passes
written from their definitions: this runs the real libraries once.)

    # 1. With the project's venv: checkpoints of randomly initialised encoders (every
    #    parameter and BatchNorm statistic perturbed, so each one matters), exported, and
    #    load_encoder's features of random uint8 images, under --root:
    python benchmarks/pytorch_parity.py export --root=/tmp/parity
    # 2. With a venv that has torch, torchvision, timm and safetensors (not this project's):
    #    runs each encoder.json's own "pytorch" lines on the same images and compares:
    /tmp/torchenv/bin/python benchmarks/pytorch_parity.py compare --root=/tmp/parity

`compare` prints one JSON line per encoder (max absolute and relative difference, the
tolerance encoder.json's "agreement" states) and exits 1 when one is over it. The encoders:
torchvision's ResNet-18 (ImageNet stem) and timm's ViTs (vit_small_patch16_224 by name, with
timm's 6 heads and MoCo v3's 12; a
'mu' ViT through VisionTransformer with every size given, sin-cos and learned positions,
class-token and average pooling), all float32. `compare` imports neither JAX nor this
project.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES = 4
RELATIVE_TOLERANCE = 1e-4  # encoder.json's float32 agreement.

# name -> (config.model overrides, image size).
ENCODERS = {
    "resnet18": ({"name": "resnet", "depth": 18, "width_multiplier": 1.0,
                  "small_image_stem": False}, 64),
    "vit_s16": ({"name": "vit", "vit": {"variant": "S", "patch_size": 16}}, 64),
    "vit_s16_12_heads": ({"name": "vit", "vit": {"variant": "S", "patch_size": 16,
                                                 "num_heads": 12}}, 64),  # MoCo v3's.
    "vit_mu_learned_gap": ({"name": "vit", "vit": {
        "variant": "mu", "patch_size": 4, "position_embedding": "learned",
        "pos_embed_image_size": 16, "pooling": "gap"}}, 24),
}


def _perturbed(tree, rng: np.random.Generator):
  """Every float leaf moved by noise of 0.1 of its own scale (and at least 0.05): random-init
  zeros (biases, a class token) and ones (norm scales) become values that matter."""
  def move(leaf):
    leaf = np.asarray(leaf)
    if leaf.dtype.kind != "f":
      return leaf
    scale = max(float(np.std(leaf)), 0.5)
    return (leaf + 0.1 * scale * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(move, tree)


def export(root: str) -> None:
  """Step 1: a checkpoint, export and load_encoder features per encoder, in root/<name>."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top

  from configs import food101  # pylint: disable=g-import-not-at-top
  from simclr_jax import load_encoder  # pylint: disable=g-import-not-at-top
  from simclr_jax.stages import export as export_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  from simclr_jax.training import model as model_lib  # pylint: disable=g-import-not-at-top

  mesh = Mesh(np.array(jax.devices()[:1]), ("data",),
              axis_types=(jax.sharding.AxisType.Auto,))
  for index, (name, (model, image_size)) in enumerate(ENCODERS.items()):
    config = food101.get_config()
    config.model.update(model)
    config.augment.image_size = image_size
    config.online_probe = False
    config.compute_dtype = "float32"  # The agreement to check: float32 rounding.
    workdir = os.path.join(root, name)
    state = jax.device_get(model_lib.init_model(config, mesh))
    rng = np.random.default_rng(index)
    state = {"params": {**state["params"], "encoder": _perturbed(state["params"]["encoder"], rng)},
             "batch_stats": {**state["batch_stats"],
                             "encoder": jax.tree.map(lambda s: np.abs(_perturbed(s, rng)),
                                                     state["batch_stats"].get("encoder", {}))}}
    with checkpoints.create_manager(checkpoints.checkpoint_dir(workdir)) as manager:
      checkpoints.save(manager, 1, {"model": jax.device_put(state, jax.devices()[0])}, config)
      manager.wait_until_finished()
    export_lib.export_encoder(config, workdir)
    images = rng.integers(0, 256, (NUM_IMAGES, image_size, image_size, 3), dtype=np.uint8)
    features = np.asarray(load_encoder(workdir)(images), np.float32)
    np.savez(os.path.join(workdir, "export", "parity.npz"), images=images, features=features)
    print(json.dumps({"encoder": name, "features": list(features.shape)}), flush=True)


def compare(root: str) -> int:
  """Step 2: each encoder.json's "pytorch" lines on the saved images, against the JAX
  features. Returns the exit status."""
  failed = 0
  for name in ENCODERS:
    folder = os.path.join(root, name, "export")
    with open(os.path.join(folder, "encoder.json")) as f:
      meta = json.load(f)
    saved = np.load(os.path.join(folder, "parity.npz"))
    namespace = {"images": saved["images"]}
    cwd = os.getcwd()
    os.chdir(folder)  # The lines load 'encoder.safetensors' from where they run.
    try:
      exec("\n".join(meta["pytorch"]), namespace)  # pylint: disable=exec-used
    finally:
      os.chdir(cwd)
    theirs, ours = namespace["features"].numpy(), saved["features"]
    difference = np.abs(theirs - ours)
    relative = float(difference.max() / np.abs(ours).max())
    ok = theirs.shape == ours.shape and relative <= RELATIVE_TOLERANCE
    failed += not ok
    print(json.dumps({"encoder": name, "ok": ok, "pytorch_model": meta["pytorch"][2],
                      "features": list(ours.shape), "max_abs_difference": float(difference.max()),
                      "relative_to_max_feature": relative, "tolerance": RELATIVE_TOLERANCE}),
          flush=True)
  return 1 if failed else 0


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("step", choices=("export", "compare"))
  parser.add_argument("--root", default="/tmp/pytorch_parity")
  args = parser.parse_args()
  if args.step == "export":
    export(args.root)
    return 0
  return compare(args.root)


if __name__ == "__main__":
  sys.exit(main())
