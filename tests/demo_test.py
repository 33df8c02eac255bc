"""The offline demo end to end, against its targets (slow: about 4 minutes on 2 cores)."""

import json
import subprocess
import sys

import pytest

ROOT = __file__.rsplit("/tests/", 1)[0]


@pytest.mark.slow
def test_demo_reaches_its_targets(tmp_path):
  for mode in ("pretrain", "linear_eval"):
    subprocess.run([sys.executable, "main.py", "--config=configs/demo.py",
                    f"--workdir={tmp_path}", f"--mode={mode}"], cwd=ROOT, check=True,
                   env={"PATH": "/usr/bin:/bin", "SIMCLR_NO_DISTRIBUTED": "1"}, timeout=900)
  results = json.loads((tmp_path / "linear_eval.json").read_text())
  assert results["num_eval_examples"] == 450
  assert (tmp_path / "tsne.png").exists()
  assert results["top1"] >= 0.97
  # 0.894 on the machine the README's table came from, 0.874 on another (same code and
  # seed, bit-identical data: XLA's CPU code and so its rounding depend on the processor,
  # and 600 steps amplify it), 0.875-0.892 over seeds 1-2: the floor sits below that spread.
  assert results["top1_5shot"] >= 0.86
  assert results["top1_5shot"] >= results["random_init_top1_5shot"] + 0.08
  # The other label-efficient measure, kNN with 5 labels per class, is clearly above too.
  assert results["knn_top1_5shot"] >= results["random_init_knn_top1_5shot"] + 0.08
  for key in ("top5", "knn_top1", "top5_5shot", "random_init_top1", "random_init_knn_top1"):
    assert 0 < results[key] <= 1
