"""What the benchmarks that run on a lent accelerator share: the chip's peak FLOP/s (and so
MFU), the runtime peak memory, throughput over K steps with one block, a profiler trace.

    python benchmarks/device_stats.py    # one JSON line: the device and its peak figures

Imports only jax and, lazily, two project modules (the memory limit; the TPU table): no
TensorFlow.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax

# Peak dense FLOP/s per device by JAX's device_kind and compute dtype. NVIDIA's tables give
# the Tensor Core rates "with sparsity" (2:4 structured); dense is half of them.
# - H200 (SXM; nvidia.com/en-us/data-center/h200, "Technical Specifications", read through
#   a copy of its table) and H100 SXM (nvidia.com/en-us/data-center/h100, the same figures):
#   BFLOAT16 Tensor Core 1,979 TFLOPS sparse -> 989e12 dense; FP32 67 TFLOPS (no Tensor
#   Cores); TF32 Tensor Core 989 sparse -> 494.5e12 dense.
# - A100, SXM and PCIe, 40 and 80 GB (NVIDIA A100 datasheet,
#   nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): BFLOAT16 312 TFLOPS dense (624
#   sparse), FP32 19.5, TF32 156 dense.
# Other kinds (H100 PCIe or NVL, H200 NVL: lower clocks) are left out: their MFU is null.
H100_SXM = {"bfloat16": 989e12, "float32": 67e12, "tf32": 494.5e12}
A100 = {"bfloat16": 312e12, "float32": 19.5e12, "tf32": 156e12}
GPU_PEAKS: dict[str, dict[str, float]] = {
    "NVIDIA H200": H100_SXM,
    "NVIDIA H100 80GB HBM3": H100_SXM,
    "NVIDIA A100-SXM4-40GB": A100, "NVIDIA A100-SXM4-80GB": A100,
    "NVIDIA A100-PCIE-40GB": A100, "NVIDIA A100 80GB PCIe": A100,
}
# JAX's TPU device kinds -> simclr_jax/stages/compile_check.py's CHIPS (which cites Google's
# per-chip bf16 figures); the names as JAX's Pallas TPU info maps them
# (jax/_src/pallas/mosaic/tpu_info.py, chip_version_from_device_kind). One JAX device is
# one chip (v4 and v5p: megacore, the default).
TPU_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p",
             "TPU v5p": "v5p", "TPU v6 lite": "v6e", "TPU v6e": "v6e"}

MAX_TRACE_FILE_BYTES = 15 * 2**20  # The device tool brings back files up to 16 MiB.
# The profile (XProf, TensorBoard) and its Perfetto form (ui.perfetto.dev); not the Chrome
# trace.json.gz the Perfetto conversion goes through (the same events again).
TRACE_FILES = (".xplane.pb", "perfetto_trace.json.gz")


def peak_flops(device_kind: str, compute_dtype: str) -> float | None:
  """The chip's peak dense FLOP/s per device for `compute_dtype` ('bfloat16', 'float32',
  'tf32'); None for a kind or dtype not in the tables (TPUs: bfloat16 only)."""
  if device_kind in TPU_KINDS:
    if compute_dtype != "bfloat16":
      return None
    from simclr_jax.stages import compile_check  # pylint: disable=g-import-not-at-top
    return compile_check.CHIPS[TPU_KINDS[device_kind]].peak_bf16_flops
  return GPU_PEAKS.get(device_kind, {}).get(compute_dtype)


def mfu(flops_per_device_step: float | None, step_s: float, device_kind: str,
        compute_dtype: str) -> float | None:
  """FLOPs per device per step / step time / the chip's peak; None where either is unknown."""
  peak = peak_flops(device_kind, compute_dtype)
  if not peak or not flops_per_device_step or step_s <= 0:
    return None
  return flops_per_device_step / step_s / peak


def flops(compiled) -> float | None:
  """XLA's cost analysis of a compiled program: its FLOPs per device (the partitioned
  module's), or None when the backend gives none."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per computation.
    analysis = analysis[0] if analysis else None
  return float(analysis["flops"]) if analysis and "flops" in analysis else None


def runtime_peak_bytes() -> int | None:
  """The most bytes the allocator held at once on any local device since the process began
  (`memory_stats()['peak_bytes_in_use']`); None where the backend reports none (CPU)."""
  peaks = []
  for device in jax.local_devices():
    stats = device.memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
      return None
    peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def time_steps(step: Callable, state: Any, batch: Any, steps: int) -> tuple[Any, Any, float]:
  """Dispatches `steps` calls `state, metrics = step(state, batch)`, each on the previous
  state, and blocks once at the end: the device runs them back to back, as in training,
  with no host round trip between steps. Returns (state, last metrics, seconds)."""
  metrics = None
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  return state, metrics, time.perf_counter() - start


def trace_steps(step: Callable, state: Any, batch: Any, steps: int,
                trace_dir: str) -> tuple[Any, dict[str, Any]]:
  """A profiler trace (`jax.profiler.trace`) of `steps` steps, flattened into `trace_dir`
  as gzipped files (the device tool brings back files at most two folders down and 16 MiB
  each; the profiler nests them four deep). Returns (state, the line's trace fields); a
  profiler that fails leaves the error there, not an exception."""
  os.makedirs(trace_dir, exist_ok=True)
  try:
    with tempfile.TemporaryDirectory() as raw:
      with jax.profiler.trace(raw, create_perfetto_trace=True):
        state, _, seconds = time_steps(step, state, batch, steps)
      files, left_out = _flatten(raw, trace_dir)
  except Exception as e:  # pylint: disable=broad-except
    return state, {"trace_dir": trace_dir, "trace_error": f"{type(e).__name__}: {e}"[:500]}
  return state, {"trace_dir": trace_dir, "trace_steps": steps, "traced_s": seconds,
                 "trace_files": files, "trace_left_out": left_out}


def _flatten(raw: str, trace_dir: str) -> tuple[dict[str, int], list[str]]:
  """The TRACE_FILES the profiler wrote under `raw` -> `trace_dir`/their names, gzipped
  unless they are already; {name: bytes} and the names too large to come back."""
  files, left_out = {}, []
  for folder, _, names in os.walk(raw):
    for name in names:
      if not name.endswith(TRACE_FILES):
        continue
      source = os.path.join(folder, name)
      target = os.path.join(trace_dir, name if name.endswith(".gz") else name + ".gz")
      if name.endswith(".gz"):
        shutil.copyfile(source, target)
      else:
        with open(source, "rb") as f_in, gzip.open(target, "wb", compresslevel=6) as f_out:
          shutil.copyfileobj(f_in, f_out)
      size = os.path.getsize(target)
      if size > MAX_TRACE_FILE_BYTES:
        os.remove(target)
        left_out.append(f"{name} ({size} bytes gzipped)")
      else:
        files[os.path.basename(target)] = size
  return files, left_out


def device_line() -> dict[str, Any]:
  """The device, its count and peak figures, and the allocator's limit."""
  from simclr_jax.training import device_memory  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  kind = devices[0].device_kind
  return {"what": "device", "jax": jax.__version__, "python": sys.version.split()[0],
          "platform": devices[0].platform, "kind": kind, "count": len(devices),
          "peak_bf16_flops": peak_flops(kind, "bfloat16"),
          "peak_f32_flops": peak_flops(kind, "float32"),
          "memory_bytes_limit": device_memory.device_limit_bytes()}


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  print(json.dumps(device_line()), flush=True)
