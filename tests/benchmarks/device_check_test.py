"""`benchmarks/device_check.sh --cpu`: every case of the accelerator check, tiny, on the CPU,
with TensorFlow, TFDS and CLU unimportable (the accelerator image has none of them): the
cases in their order, each line's fields, the trace, the budget and a failed case.

In the default suite, not e2e/, though it starts processes: a broken device check is found
here, not on a rented machine. The cases run on the toy backbone (ResNet convolutions are
tested elsewhere), and still take about 29 s of CPU time (2026-12-03, 2 cores: seven
processes, ~11 s of them importing JAX and Flax, ~17 s tracing and compiling).
"""

import gzip
import json
import os
import re
import subprocess
import sys

import pytest

from tests.e2e.no_tensorflow_test import BLOCKER
from tests.support import paths

ROOT = str(paths.REPO)
SCRIPT = os.path.join(ROOT, "benchmarks", "device_check.sh")
# Every process of the check blocks TensorFlow and, once it imports the backbone registry,
# adds the tests' toy backbone to it (as tests/support/helpers.py does); processes that never
# import the registry pay nothing for it.
SITECUSTOMIZE = BLOCKER + """
import importlib.util
class RegisterToy(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name != "simclr_jax.backbones":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    execute = spec.loader.exec_module
    def exec_module(module):
      execute(module)
      from tests.support import toy_backbone
      module.BACKBONES.setdefault("toy_mlp", toy_backbone)
    spec.loader.exec_module = exec_module
    return spec
sys.meta_path.insert(0, RegisterToy())
"""
TOY = "--config.model.name=toy_mlp --config.simclr.head_widths=(32,16)"
ORDER = ["device", "simclr-bf16-L", "supervised", "h2d", "nt_xent", "demo", "vit-bf16-xla",
         "vit-bf16-cudnn", "simclr-bf16-S", "simclr-f32-L", "simclr-f32-S", "summary"]


def _run(tmp_path, *args, **env):
  (tmp_path / "site").mkdir(exist_ok=True)
  (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
  # 2 simulated devices (conftest sets 8); the suite's other XLA flags stay.
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                     os.environ.get("XLA_FLAGS", ""))
  env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}:{ROOT}", "PYTHON": sys.executable,
         "XLA_FLAGS": f"{xla_flags} --xla_force_host_platform_device_count=2".strip(),
         "OUT": "", **env}
  out = tmp_path / "out"
  result = subprocess.run(["bash", SCRIPT, *args, f"--out={out}"], capture_output=True,
                          text=True, env=env, timeout=600)
  lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  return result, lines, out


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("device_check")
  result, lines, out = _run(tmp_path, "--cpu", DEVICE_CHECK_CPU_MODEL=TOY)
  assert result.returncode == 0, result.stderr[-3000:]
  return {line["case"]: line for line in lines}, lines, out


def test_cases_run_in_order_bf16_at_the_larger_batch_first(cpu_run):
  cases, lines, out = cpu_run
  assert [line["case"] for line in lines] == ORDER
  assert [json.loads(line) for line in (out / "device_check.jsonl").open()] == lines
  assert cases["simclr-bf16-S"] == {"case": "simclr-bf16-S", "what": "skipped",
                                    "reason": "--cpu runs one batch size"}
  summary = cases["summary"]
  assert cases["vit-bf16-cudnn"]["reason"] == "--cpu: cuDNN attention needs a GPU"
  assert summary["failed"] == [] and summary["skipped"] == ["vit-bf16-cudnn", "simclr-bf16-S",
                                                            "simclr-f32-S"]
  assert list(summary["case_s"]) == [c for c in ORDER if c not in summary["skipped"] + [
      "summary"]]
  assert summary["mode"] == "cpu" and summary["out_dir"] == str(out)


def test_the_device_line(cpu_run):
  device = cpu_run[0]["device"]
  assert device["what"] == "device" and device["platform"] == "cpu" and device["count"] == 2
  assert device["peak_bf16_flops"] is None and device["memory_bytes_limit"] is None


@pytest.mark.parametrize("case, dtype, config", [
    ("simclr-bf16-L", "bfloat16", "configs/food101.py"),
    ("demo", "float32", "configs/demo.py"),
    ("simclr-f32-L", "float32", "configs/food101.py")])
def test_simclr_steps_throughput_flops_and_memory(cpu_run, case, dtype, config):
  line = cpu_run[0][case]
  assert line["what"] == "simclr_jax train step" and line["loss_finite"]
  assert (line["config"], line["compute_dtype"], line["device_count"]) == (config, dtype, 2)
  views = 2 * line["global_batch"]
  assert line["views_per_s"] == pytest.approx(views / line["step_s"]) and line["step_s"] > 0
  assert line["flops_per_view"] == pytest.approx(
      line["flops_per_step_per_device"] / (views / 2))  # Per device: half the views.
  assert line["achieved_flops_per_s"] == pytest.approx(
      line["flops_per_step_per_device"] / line["step_s"])
  assert line["peak_memory_bytes"] > 0 and line["compile_s"] > 0
  # No peak FLOP/s nor allocator statistics for the CPU: null, not a guess.
  assert line["peak_flops"] is None and line["mfu"] is None
  assert line["runtime_peak_bytes"] is None and "mfu_vs_tf32" not in line
  assert ("trace_files" in line) == (case == "simclr-bf16-L")


def test_the_vit_case_runs_the_vit(cpu_run):
  """--cpu: the 'mu' ViT in place of ViT-S/16, its step in bfloat16 with XLA's attention."""
  line = cpu_run[0]["vit-bf16-xla"]
  assert line["what"] == "simclr_jax train step" and line["loss_finite"]
  assert line["backbone"].startswith("vit_mu4") and line["compute_dtype"] == "bfloat16"
  assert cpu_run[0]["demo"]["backbone"].startswith("toy_mlp")


def test_the_first_case_writes_a_small_flat_trace(cpu_run):
  line, out = cpu_run[0]["simclr-bf16-L"], cpu_run[2]
  assert line["trace_dir"] == str(out / "trace") and line["trace_left_out"] == []
  on_disk = {p.name: p.stat().st_size for p in (out / "trace").iterdir()}
  assert on_disk == line["trace_files"] and len(on_disk) == 2
  (xplane,) = [name for name in on_disk if name.endswith(".xplane.pb.gz")]
  assert len(gzip.decompress((out / "trace" / xplane).read_bytes())) > 1000
  perfetto = json.loads(gzip.decompress((out / "trace" / "perfetto_trace.json.gz").read_bytes()))
  assert perfetto["traceEvents"]  # What ui.perfetto.dev opens.
  assert max(on_disk.values()) < 16 * 2**20


def test_the_supervised_baseline(cpu_run):
  line = cpu_run[0]["supervised"]
  assert line["what"] == "supervised resnet step" and line["loss_finite"]
  assert line["model"] == "toy_mlp: 4x4 pooled pixels, MLP 32-16"
  assert (line["compute_dtype"], line["global_batch"], line["classes"]) == ("bfloat16", 4, 10)
  assert line["images_per_s"] == pytest.approx(4 / line["step_s"])
  assert line["flops_per_step_per_device"] > 0 and line["mfu"] is None
  # The MLPerf ratio is for ResNet-50 at 224 px only.
  assert line["mlperf_h200_images_per_s"] == 7950 and line["ratio_to_mlperf"] is None


def test_the_host_to_device_put_and_the_loss(cpu_run):
  h2d, ntxent = cpu_run[0]["h2d"], cpu_run[0]["nt_xent"]
  assert h2d["bytes"] == 4 * 2 * 32 * 32 * 3 and h2d["global_batch"] == 4
  assert h2d["bytes_per_s"] == pytest.approx(h2d["bytes"] / h2d["put_s_median"])
  assert 0 < h2d["put_s_min"] <= h2d["put_s_median"]
  assert ntxent["global_batch"] == 64 and ntxent["anchors_per_s"] == pytest.approx(
      128 / ntxent["step_s"])
  assert ntxent["flops_per_device"] > 0 and ntxent["mfu"] is None


def test_a_spent_budget_skips_every_case(tmp_path):
  result, lines, _ = _run(tmp_path, DEVICE_CHECK_BUDGET_S="5")
  assert result.returncode == 0
  assert [line["case"] for line in lines] == ORDER
  assert all(line["what"] == "skipped" for line in lines[:-1])
  assert "the 5 s budget: 0 s spent, about 80 s more needed" == lines[1]["reason"]
  assert lines[-1]["skipped"] == ORDER[:-1] and lines[-1]["case_s"] == {}


def test_a_failed_case_is_reported_and_the_rest_still_run(tmp_path):
  result, lines, out = _run(tmp_path, "--cpu", PYTHON="false")
  assert result.returncode == 1
  ran = [c for c in ORDER[:-1] if not c.endswith(("-S", "-cudnn"))]
  assert [line["case"] for line in lines if line["what"] == "failed"] == ran
  assert lines[-1]["failed"] == ran
  assert "== device: false benchmarks/device_stats.py" in (out / "device_check.log").read_text()
