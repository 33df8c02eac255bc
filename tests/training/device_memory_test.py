"""The memory check before the first step and the out-of-memory `Error:` line."""

import jax
import jax.numpy as jnp
import pytest
import tensorflow_datasets as tfds
from jax import monitoring

from simclr_jax import runtime
from simclr_jax.training import device_memory
from tests.support.helpers import tiny_food101_config

GIB = 2**30
BATCH = device_memory.BatchField("batch_size", 2048)


def test_the_compilers_out_of_memory_sizes_are_read():
  message = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
             "space hbm. HLO temporaries (16.29G) exceeds available HBM (15.75G).")
  assert device_memory.out_of_memory_sizes(message) == (int(16.29 * GIB), int(15.75 * GIB))
  assert device_memory.out_of_memory_sizes("Used 20.5G of 15.75G hbm.") == (
      int(20.5 * GIB), int(15.75 * GIB))
  assert device_memory.out_of_memory_sizes("RESOURCE_EXHAUSTED: something else") == (None, None)


def test_the_fitting_batch_grows_only_the_temporaries():
  # 256 images: 2 GiB fixed (state, batch) + 12 GiB temporaries (48 MiB an image).
  fit = device_memory.fitting_images_per_device(256, 14 * GIB, 10 * GIB, temp=12 * GIB)
  assert fit == (10 - 2) * GIB // (48 * 2**20) // 8 * 8 == 168
  # Without the split, all of it grows: 256 * 10 / 14 = 182.9 -> 176.
  assert device_memory.fitting_images_per_device(256, 14 * GIB, 10 * GIB) == 176
  assert device_memory.fitting_images_per_device(256, 14 * GIB, GIB, temp=12 * GIB) == 0
  assert device_memory.fitting_images_per_device(4, 8 * GIB, 5 * GIB) == 2  # Below 8: as is.


def test_the_advice_names_the_field_the_sizes_and_a_global_batch_that_splits():
  message = device_memory.advice("The pretraining step", BATCH, 14 * GIB, 10 * GIB,
                                 temp=12 * GIB, device_count=8)
  assert message.startswith("The pretraining step does not fit in the device's memory at "
                            "batch_size=2048 (256 images per device): it needs 14.00 GiB per "
                            "device, 10.00 GiB available. About 168 images per device would "
                            "fit: --config.batch_size=1344")
  assert "\n" not in message
  unknown = device_memory.advice("The fine-tuning step",
                                 device_memory.BatchField("finetune.batch_size", 64), None,
                                 None, device_count=8)
  assert "Lower --config.finetune.batch_size" in unknown


def _count_compiles(counter):
  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      counter.append(event)
  monitoring.register_event_duration_secs_listener(listener)


def test_the_checked_step_is_the_one_the_first_call_runs_and_an_oversized_one_stops(
    monkeypatch):
  step = jax.jit(lambda state, batch: (state + batch.sum(), batch.mean()), donate_argnums=0)
  state, batch = jnp.zeros((64, 64)), jnp.ones((1024, 64))
  compiles = []
  _count_compiles(compiles)
  monkeypatch.setattr(device_memory, "device_limit_bytes", lambda: GIB)
  device_memory.check_step_fits(step, state, batch, "The step", BATCH)
  checked = len(compiles)
  assert checked >= 1
  step(state, batch)
  assert len(compiles) == checked  # The call reused the checked compile.

  needed = 2 * 64 * 64 * 4 + 1024 * 64 * 4 + 4  # state in and out (not donated on CPU), batch.
  monkeypatch.setattr(device_memory, "device_limit_bytes", lambda: needed // 2)
  with pytest.raises(device_memory.OutOfMemoryError, match=r"at batch_size=2048 .* available"):
    device_memory.check_step_fits(step, jnp.zeros((64, 64)), batch, "The step", BATCH)


class _OutOfMemoryAtCompile:
  """A jit function whose compile fails as XLA:TPU's does."""

  def lower(self, *args):
    del args
    return self

  def compile(self):
    raise RuntimeError("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory "
                       "in memory space hbm. HLO temporaries (16.29G) exceeds available HBM "
                       "(15.75G).")


def test_a_compile_out_of_memory_is_one_line_with_the_compilers_sizes():
  with pytest.raises(device_memory.OutOfMemoryError) as error:
    device_memory.check_step_fits(_OutOfMemoryAtCompile(), None, None, "The pretraining step",
                                  device_memory.BatchField("batch_size", 2048 * 4))
  assert str(error.value).startswith(
      "The pretraining step does not fit in the device's memory at batch_size=8192 (")
  assert "it needs 16.29 GiB per device, 15.75 GiB available" in str(error.value)


def test_a_run_time_out_of_memory_becomes_the_error_and_others_pass():
  with pytest.raises(device_memory.OutOfMemoryError, match="Lower --config.batch_size"):
    with device_memory.out_of_memory_as_error("The step", BATCH):
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1234 bytes.")
  with pytest.raises(RuntimeError, match="INTERNAL"):
    with device_memory.out_of_memory_as_error("The step", BATCH):
      raise RuntimeError("INTERNAL: something else")


def test_pretraining_that_does_not_fit_stops_before_its_first_step_with_one_line(
    monkeypatch, tmp_path):
  monkeypatch.setattr(device_memory, "device_limit_bytes", lambda: 1024)
  with tfds.testing.mock_data(num_examples=32), pytest.raises(SystemExit) as exit_info:
    runtime.run(tiny_food101_config(), str(tmp_path), "pretrain")
  message = exit_info.value.code
  assert message.startswith("Error: The pretraining step does not fit in the device's memory "
                            "at batch_size=16 (2 images per device): it needs ")
  assert "\n" not in message
  assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
