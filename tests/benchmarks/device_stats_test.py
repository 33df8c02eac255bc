"""benchmarks/device_stats.py: the peak FLOP/s table (NVIDIA's datasheets, the TPU figures
of compile_check's CHIPS), MFU, the allocator's peak and K steps with one block."""

import types

import jax
import jax.numpy as jnp
import pytest

from benchmarks import device_stats
from simclr_jax.stages import compile_check


@pytest.mark.parametrize("kind, dtype, peak", [
    ("NVIDIA H200", "bfloat16", 989e12),  # 1,979 TFLOPS with sparsity, halved.
    ("NVIDIA H200", "float32", 67e12),
    ("NVIDIA H200", "tf32", 494.5e12),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
    ("NVIDIA A100-PCIE-40GB", "float32", 19.5e12),
    ("TPU v4", "bfloat16", 275e12),
    ("TPU v5 lite", "bfloat16", 197e12),
    ("TPU v5", "bfloat16", 459e12),
    ("TPU v6 lite", "bfloat16", 918e12),
    ("TPU v5 lite", "float32", None),  # No float32 figure for TPUs.
    ("NVIDIA H100 PCIe", "bfloat16", None),  # Other clocks: not in the table.
    ("NVIDIA H200 NVL", "bfloat16", None),
    ("cpu", "bfloat16", None)])
def test_peak_flops_per_device(kind, dtype, peak):
  assert device_stats.peak_flops(kind, dtype) == peak


def test_tpu_peaks_are_compile_checks():
  for kind, generation in device_stats.TPU_KINDS.items():
    assert device_stats.peak_flops(kind, "bfloat16") == (
        compile_check.CHIPS[generation].peak_bf16_flops)


def test_mfu():
  # A step of 49.45 TFLOP a device in 0.1 s: 494.5 TFLOP/s, half an H200's bf16 peak and
  # all of its TF32 peak.
  assert device_stats.mfu(49.45e12, 0.1, "NVIDIA H200", "bfloat16") == pytest.approx(0.5)
  assert device_stats.mfu(49.45e12, 0.1, "NVIDIA H200", "tf32") == pytest.approx(1.0)
  assert device_stats.mfu(49.45e12, 0.1, "cpu", "bfloat16") is None
  assert device_stats.mfu(None, 0.1, "NVIDIA H200", "bfloat16") is None


def test_runtime_peak_is_the_largest_devices_and_null_without_statistics(monkeypatch):
  def devices(*stats):
    return lambda: [types.SimpleNamespace(memory_stats=lambda s=s: s) for s in stats]
  monkeypatch.setattr(jax, "local_devices", devices({"peak_bytes_in_use": 5, "x": 9},
                                                   {"peak_bytes_in_use": 7}))
  assert device_stats.runtime_peak_bytes() == 7
  monkeypatch.setattr(jax, "local_devices", devices(None, None))  # The CPU's answer.
  assert device_stats.runtime_peak_bytes() is None


def test_time_steps_chains_the_state_and_blocks_once(monkeypatch):
  blocks = []
  block = jax.block_until_ready
  monkeypatch.setattr(jax, "block_until_ready", lambda x: blocks.append(1) or block(x))
  step = jax.jit(lambda state, batch: (state + batch, {"loss": state.sum()}))
  state, metrics, seconds = device_stats.time_steps(step, jnp.zeros(3), jnp.ones(3), 4)
  assert state.tolist() == [4.0, 4.0, 4.0] and float(metrics["loss"]) == 9.0
  assert blocks == [1] and seconds > 0
