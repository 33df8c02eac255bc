"""The input-pipeline benchmark runs end to end and prints what docs/benchmarks.md quotes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import make_jpegs
from tests.support import paths

ROOT = str(paths.REPO)


def test_pipeline_benchmark_prints_rates_per_variant(tmp_path):
  make_jpegs.write_jpegs(str(tmp_path), count=8, classes=2)
  command = [sys.executable, os.path.join(ROOT, "benchmarks", "input_pipeline.py"),
             "--dir", str(tmp_path), "--sizes", "32", "--batch", "4", "--batches", "2",
             "--warmup", "1", "--decode-images", "64", "--no-antialias"]
  env = {**os.environ, "SIMCLR_NO_DISTRIBUTED": "1"}
  out = subprocess.run(command, capture_output=True, text=True, check=True, env=env,
                       timeout=300).stdout
  lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  limit, *pipelines = lines
  assert limit["what"] == "JPEG decode limit" and limit["files"] == 8
  assert limit["images_per_s"] > 0 and limit["two_crop_decodes_images_per_s"] > 0
  assert limit["bounding_crop_decode_images_per_s"] > 0
  assert [p["variant"] for p in pipelines] == ["seed config", "no antialiasing"]
  for result in pipelines:
    assert result["views_shape"] == [4, 2, 32, 32, 3] and result["files"] == 8
    assert result["images_per_s"] > 0
    assert abs(result["views_per_s"] - 2 * result["images_per_s"]) <= 0.02  # Each rounded.
    assert result["fraction_of_decode_limit"] == round(
        result["images_per_s"] / limit["images_per_s"], 3)
    assert result["fraction_of_its_decode"] == round(
        result["images_per_s"] / limit["bounding_crop_decode_images_per_s"], 3)


def test_conv_breakdown_lists_resnet50s_convolutions():
  """53 convolutions (stem, 16 bottlenecks x 3, 4 projections) and 4.09 GMAC per 224 px
  image: ResNet-50's published 4.1 GMAC less its 2 MMAC classifier."""
  from benchmarks import conv_breakdown  # pylint: disable=g-import-not-at-top
  convs = conv_breakdown.resnet50_convs(224)
  assert sum(conv["count"] for conv in convs) == 53
  macs = sum(conv["count"] * conv_breakdown.conv_macs(conv, 1) for conv in convs)
  assert abs(macs / 1e9 - 4.087) < 0.001
  assert len(convs) == len({tuple(sorted(conv.items())) for conv in convs})  # Distinct.


@pytest.mark.parametrize("variant", ["patches", "shifts"])
def test_conv_breakdown_variants_compute_xlas_convolution(variant):
  from benchmarks import conv_breakdown  # pylint: disable=g-import-not-at-top
  conv = dict(cin=3, cout=4, kernel=3, stride=2, spatial=9, count=1)
  xla = conv_breakdown.jax_timers(conv, 2, "xla", return_outputs=True)
  other = conv_breakdown.jax_timers(conv, 2, variant, return_outputs=True)
  for name in ("forward", "input_grad", "weight_grad"):
    np.testing.assert_allclose(other[name](), xla[name](), rtol=1e-4, atol=1e-5)


def test_linear_probe_benchmark_prints_a_line_per_size():
  command = [sys.executable, os.path.join(ROOT, "benchmarks", "linear_probe.py"),
             "--sizes", "600,1200", "--epochs", "2", "--classes", "5", "--eval_examples", "50"]
  env = {**os.environ, "SIMCLR_NO_DISTRIBUTED": "1"}
  out = subprocess.run(command, capture_output=True, text=True, check=True, env=env,
                       timeout=300).stdout
  lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  assert [line["train_examples"] for line in lines] == [600, 1200]
  # 2 epochs of n // 1024 minibatches, at least one (batch min(1024, n)).
  assert [line["classifier_steps"] for line in lines] == [2, 2]
  assert all(line["classifier_s"] > 0 and 0 <= line["top1"] <= 1 for line in lines)
