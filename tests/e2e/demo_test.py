"""The offline demo end to end for every method, against its targets (slow: about 4-6
minutes each on 2 cores)."""

import json
import subprocess
import sys

import pytest

from tests.support import paths

ROOT = str(paths.REPO)


def _run_demo(workdir, method):
  """`make demo METHOD=method`'s two commands; linear_eval.json's results."""
  for mode in ("pretrain", "linear_eval"):
    subprocess.run([sys.executable, "main.py", f"--config=configs/demo.py:{method}",
                    f"--workdir={workdir}", f"--mode={mode}"], cwd=ROOT, check=True,
                   env={"PATH": "/usr/bin:/bin", "SIMCLR_NO_DISTRIBUTED": "1"}, timeout=900)
  return json.loads((workdir / "linear_eval.json").read_text())


_RESULTS = {}
FINETUNE_MARGIN = 0.2  # 0.931 against 0.493 on this machine (README).


def _results_of(method, tmp_path_factory):
  """One demo run per method for the tests below."""
  if method not in _RESULTS:
    _RESULTS[method] = _run_demo(tmp_path_factory.mktemp(f"demo_{method}"), method)
  return _RESULTS[method]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["byol", "mocov3", "vicreg"])
def test_each_methods_demo_is_10_points_above_random_init_with_5_labels(tmp_path_factory,
                                                                       method):
  """The issue's label-efficiency target (README: the numbers)."""
  results = _results_of(method, tmp_path_factory)
  assert results["method"] == method and results["num_eval_examples"] == 450
  assert results["top1_5shot"] >= results["random_init_top1_5shot"] + 0.10


@pytest.mark.slow
@pytest.mark.parametrize("method", ["byol", "mocov3", "vicreg"])
def test_each_methods_demo_reaches_095_linear_top1(tmp_path_factory, method):
  assert _results_of(method, tmp_path_factory)["top1"] >= 0.95


@pytest.mark.slow
def test_demo_reaches_its_targets(tmp_path):
  results = _run_demo(tmp_path, "simclr")
  assert results["num_eval_examples"] == 450
  assert (tmp_path / "tsne.png").exists()
  assert results["top1"] >= 0.97
  # 0.894 on the machine the README's table came from, 0.874 on another (same code and
  # seed, bit-identical data: XLA's CPU code and so its rounding depend on the processor,
  # and 600 steps amplify it), 0.875-0.892 over seeds 1-2: the floor sits below that spread.
  assert results["top1_5shot"] >= 0.86
  assert results["top1_5shot"] >= results["random_init_top1_5shot"] + 0.10
  # The other label-efficient measure, kNN with 5 labels per class, is clearly above too.
  assert results["knn_top1_5shot"] >= results["random_init_knn_top1_5shot"] + 0.08
  for key in ("top5", "knn_top1", "top5_5shot", "random_init_top1", "random_init_knn_top1"):
    assert 0 < results[key] <= 1
  # Fine-tuning from the demo's checkpoint with 10% of the labels (README: the numbers).
  subprocess.run([sys.executable, "main.py", "--config=configs/demo.py",
                  f"--workdir={tmp_path}", "--mode=finetune"], cwd=ROOT, check=True,
                 env={"PATH": "/usr/bin:/bin", "SIMCLR_NO_DISTRIBUTED": "1"}, timeout=900)
  tuned = json.loads((tmp_path / "finetune.json").read_text())
  assert tuned["num_labelled_examples"] == 136 and tuned["num_eval_examples"] == 450
  assert tuned["top1"] >= tuned["random_init_top1"] + FINETUNE_MARGIN
