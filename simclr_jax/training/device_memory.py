"""Does a training step fit in the accelerator's memory: checked on the compiled step before
the first step runs, and an out-of-memory (at compile or at run time) turned into one
`Error:` line naming the memory needed and available and the batch that would fit, instead
of XLA's traceback.

The check needs the device's memory limit (`Device.memory_stats()['bytes_limit']`: GPU and
TPU); on the CPU, which reports none, only the compile runs (it would anyway). Imports no
TensorFlow, TFDS or CLU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator

import jax

from simclr_jax import config_checks

GIB = 1024**3
# Suggested per-device batches are multiples of this (or 1 below it).
BATCH_GRANULE = 8


class OutOfMemoryError(config_checks.ConfigError):
  """A step that does not fit in the devices' memory (one `Error:` line, runtime.py)."""


@dataclasses.dataclass(frozen=True)
class BatchField:
  """The config field that sets a step's global batch (e.g. 'finetune.batch_size') and its
  value in images: what the out-of-memory advice names."""
  name: str
  value: int


_SIZE = r"([\d.]+)\s*([KMGT]?)i?B?"


def out_of_memory_sizes(message: str | None) -> tuple[int | None, int | None]:
  """(needed, available) bytes from XLA's RESOURCE_EXHAUSTED message, e.g. 'HLO
  temporaries (16.29G) exceeds available HBM (15.75G)' or 'Used 16.29G of 15.75G hbm';
  None where the message does not say."""
  for pattern in (rf"\({_SIZE}\) exceeds available HBM \({_SIZE}\)",
                  rf"Used {_SIZE} of {_SIZE} hbm"):
    found = re.search(pattern, message or "")
    if found:
      return _bytes(*found.group(1, 2)), _bytes(*found.group(3, 4))
  return None, None


def _bytes(number: str, unit: str) -> int:
  return int(float(number) * 1024 ** "_KMGT".index(unit or "_"))


def is_out_of_memory(error: BaseException) -> bool:
  """XLA's out-of-memory (compile or run time, any backend)."""
  return isinstance(error, RuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


def device_limit_bytes() -> int | None:
  """The memory one local device may use (its allocator's limit), or None where the
  backend does not say (the CPU)."""
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["bytes_limit"]) if stats and stats.get("bytes_limit") else None


def compiled_bytes(compiled) -> tuple[int, int]:
  """(total, temporary) bytes per device of a compiled SPMD step: its arguments and
  outputs (less those donated into them) and its temporaries."""
  memory = compiled.memory_analysis()
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
           - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  return int(total), int(memory.temp_size_in_bytes)


def fitting_images_per_device(images: int, needed: int, available: int,
                              temp: int | None = None) -> int:
  """About how many images per device fit in `available` bytes, given that `images` per
  device need `needed` bytes of which `temp` (the temporaries: activations, gradients'
  buffers) grow with the batch and the rest does not (None: all of it grows, a lower
  bound). A linear estimate from one compile, rounded down to a multiple of 8."""
  growing = needed if temp is None else temp
  fixed = needed - growing
  if images <= 0 or growing <= 0 or available <= fixed:
    return 0
  fit = int((available - fixed) / (growing / images))
  return fit // BATCH_GRANULE * BATCH_GRANULE if fit >= BATCH_GRANULE else fit


def advice(what: str, batch: BatchField, needed: int | None, available: int | None,
           temp: int | None = None, device_count: int | None = None) -> str:
  """The one-line message: what does not fit, the memory needed and available per device,
  and the batch that would (when the sizes are known)."""
  devices = device_count or jax.device_count()
  images = batch.value // devices
  gib = lambda n: f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"
  head = f"{what} does not fit in the device's memory at {batch.name}={batch.value} " \
         f"({images} images per device)"
  if needed is None or available is None:
    return (f"{head}: {available and gib(available) or 'the memory'} available per device. "
            f"Lower --config.{batch.name} (or compute in bfloat16: "
            f"--config.compute_dtype=bfloat16).")
  fit = fitting_images_per_device(images, needed, available, temp)
  sizes = f"{head}: it needs {gib(needed)} per device, {gib(available)} available"
  if fit == 0:
    return (f"{sizes}; not even one image per device fits: compute in bfloat16 "
            f"(--config.compute_dtype=bfloat16) or use a smaller model or image size.")
  return (f"{sizes}. About {fit} images per device would fit: --config.{batch.name}="
          f"{fit * devices} (a linear estimate from this compile), or compute in bfloat16 "
          f"(--config.compute_dtype=bfloat16).")


def check_step_fits(step_fn, state, batch, what: str, batch_field: BatchField) -> None:
  """Compiles `step_fn` (a jax.jit function) for (state, batch) — the compile its first
  call would do, which then reuses it — and raises OutOfMemoryError when the compiler runs
  out of memory or the compiled step needs more than a device's limit."""
  if not hasattr(step_fn, "lower"):
    return
  try:
    compiled = step_fn.lower(state, batch).compile()
  except RuntimeError as e:
    if not is_out_of_memory(e):
      raise
    needed, available = out_of_memory_sizes(str(e))
    raise OutOfMemoryError(advice(what, batch_field, needed,
                                  available or device_limit_bytes())) from None
  available = device_limit_bytes()
  if available is None:
    return
  needed, temp = compiled_bytes(compiled)
  if needed > available:
    raise OutOfMemoryError(advice(what, batch_field, needed, available, temp))


@contextlib.contextmanager
def out_of_memory_as_error(what: str, batch_field: BatchField | None) -> Iterator[None]:
  """An out-of-memory while the steps run (memory the compile-time check could not see:
  other arrays, fragmentation) becomes OutOfMemoryError's one line."""
  try:
    yield
  except RuntimeError as e:
    if batch_field is None or not is_out_of_memory(e):
      raise
    needed, available = out_of_memory_sizes(str(e))
    raise OutOfMemoryError(advice(what, batch_field, needed,
                                  available or device_limit_bytes())) from None
