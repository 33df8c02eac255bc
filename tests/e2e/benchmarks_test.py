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


@pytest.mark.slow
def test_device_check_runs_its_tiny_version_without_tensorflow(tmp_path):
  """`device_check.sh --cpu`: every case of the accelerator check, tiny, on the CPU, with
  TensorFlow, TFDS and CLU made unimportable (the accelerator image has none of them)."""
  from tests.e2e.no_tensorflow_test import BLOCKER  # pylint: disable=g-import-not-at-top
  (tmp_path / "sitecustomize.py").write_text(BLOCKER)
  env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}", "PYTHON": sys.executable,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  out = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "device_check.sh"), "--cpu"],
                       capture_output=True, text=True, env=env, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  device, *cases = lines
  assert device["what"] == "device" and device["platform"] == "cpu" and device["count"] == 2
  steps = [c for c in cases if c["what"] == "simclr_jax train step"]
  assert [(c["config"], c["compute_dtype"]) for c in steps] == [
      ("configs/food101.py", "float32"), ("configs/food101.py", "bfloat16"),
      ("configs/demo.py", "float32")]
  assert all(c["views_per_s"] > 0 and c["loss_finite"] for c in steps)
  (ntxent,) = [c for c in cases if c["what"] == "simclr_jax nt_xent forward+backward"]
  assert ntxent["global_batch"] == 64 and ntxent["anchors_per_s"] > 0


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
