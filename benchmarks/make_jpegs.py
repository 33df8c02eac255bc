"""Writes photo-like JPEGs of Food-101 size for the input-pipeline benchmark.

    python benchmarks/make_jpegs.py DIR [--count 400] [--classes 4] [--quality 90]

Layout DIR/<class>/<i>.jpg (torchvision's ImageFolder, config.data_source='folder').
Food-101's images have their longer side 512 px; shapes here cycle through 512x384,
384x512, 512x512, 512x341 and 341x512 (height x width). Each image is a smooth colour
field with a few soft-edged blobs and bars, textured with multi-scale noise and pixel
noise, so its JPEG holds detail like a photograph's (about 40-65 KB at quality 90, mean
~48 KB; Food-101's 101,000 JPEGs take ~4.7 GB, ~46 KB each) and costs about as much to
decode; a flat or a purely random image would not.

Only NumPy and Pillow (both in the project's environment); deterministic given --seed.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

SHAPES = ((512, 384), (384, 512), (512, 512), (512, 341), (341, 512))  # (height, width)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
  """Value noise: a coarse random grid upsampled bilinearly, (H, W) in [-1, 1]."""
  grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
  small = Image.fromarray(grid, mode="F")
  return np.asarray(small.resize((width, height), Image.BILINEAR), np.float32)


def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """An (H, W, 3) uint8 image with gradients, shapes, texture and noise."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  y /= height
  x /= width
  # Background: a linear colour gradient between two random colours.
  c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  angle = rng.uniform(0, 2 * np.pi)
  t = np.clip(0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle), 0, 1)
  image = (1 - t)[..., None] * c0 + t[..., None] * c1
  # Soft-edged ellipses ("food items") and a few bars ("table, plate rim").
  for _ in range(rng.integers(3, 8)):
    cy, cx = rng.uniform(0, 1, 2)
    ry, rx = rng.uniform(0.05, 0.35, 2)
    d = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
    alpha = np.clip((1.0 - d) * rng.uniform(3, 20), 0, 1)[..., None]
    image = (1 - alpha) * image + alpha * rng.uniform(0, 255, 3)
  for _ in range(rng.integers(1, 4)):
    y0 = rng.uniform(0, 1)
    alpha = ((y > y0) & (y < y0 + rng.uniform(0.01, 0.08)))[..., None] * rng.uniform(0.3, 0.9)
    image = (1 - alpha) * image + alpha * rng.uniform(0, 255, 3)
  # Texture at several scales (per channel, partly correlated), then sensor-like noise.
  texture = sum(amp * _smooth_noise(rng, height, width, cells)
                for amp, cells in ((25, 4), (15, 16), (10, 64)))
  image = image + texture[..., None] * rng.uniform(0.6, 1.0, 3)
  image = image + rng.normal(0, 6, (height, width, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def write_jpegs(directory: str, count: int = 400, classes: int = 4, quality: int = 90,
                seed: int = 0) -> list[str]:
  """Writes `count` JPEGs into directory/class_<k>/<i>.jpg; returns their paths."""
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    folder = os.path.join(directory, f"class_{i % classes}")
    os.makedirs(folder, exist_ok=True)
    height, width = SHAPES[i % len(SHAPES)]
    path = os.path.join(folder, f"{i:05d}.jpg")
    Image.fromarray(photo_like(rng, height, width)).save(path, "JPEG", quality=quality)
    paths.append(path)
  return paths


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("dir")
  parser.add_argument("--count", type=int, default=400)
  parser.add_argument("--classes", type=int, default=4)
  parser.add_argument("--quality", type=int, default=90)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  paths = write_jpegs(args.dir, args.count, args.classes, args.quality, args.seed)
  sizes = [os.path.getsize(p) for p in paths]
  print(f"Wrote {len(paths)} JPEGs to {args.dir}: mean {np.mean(sizes) / 1024:.0f} KB "
        f"(min {min(sizes) / 1024:.0f}, max {max(sizes) / 1024:.0f}).")


if __name__ == "__main__":
  main()
