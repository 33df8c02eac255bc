"""Compile check (--mode=compile_check): the real pretraining step compiled ahead of time
for a Cloud TPU slice on this machine, without the hardware (as MaxText's
train_compile.py), and what the compiler says of it per chip: memory against the chip's
HBM, FLOPs and bytes per view, and the roofline bound on views/s. Writes
WORKDIR/compile_check.json.

Needs libtpu (the TPU compiler; `pip install "jax[tpu]==0.10.2"`), run with JAX on the CPU
(`JAX_PLATFORMS=cpu`, which main.py sets for this mode). Reads no data: the state and the
batch are ShapeDtypeStructs (`training.state.abstract_train_state`,
`training.pretrain_step.abstract_batch`) laid out as pretraining lays them out.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from typing import Any

import jax
import optax
from absl import logging

from simclr_jax import config_checks, stages
from simclr_jax.sharding import create_mesh
from simclr_jax.training import model as model_lib
from simclr_jax.training import compile_cache, optim, summaries
from simclr_jax.training.device_memory import out_of_memory_sizes
from simclr_jax.training.pretrain_step import abstract_batch, compile_train_step
from simclr_jax.training.state import abstract_train_state, create_optimizer

SUMMARY_FILE = "compile_check.json"
INSTALL = 'pip install "jax[tpu]==0.10.2"'
GIB = 1024**3
# The learning-rate and momentum schedules' length: constants of the program only, so its
# memory and cost do not depend on them (and no data is read to count the examples).
NOMINAL_STEPS_PER_EPOCH = 100


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation: its topology names for libtpu and its published per-chip figures."""
  prefix: str  # libtpu's topology name: f"{prefix}:{shape}".
  chip_config: str  # libtpu's chip_config_name: 'megacore' joins a chip's 2 TensorCores.
  cores_per_chip: int  # What the accelerator type's number counts: v4-8 = 8 cores = 4 chips.
  dims: int  # The torus: 3-D (v4, v5p) or 2-D (v5e, v6e).
  max_chips: int  # The largest slice named here.
  hbm_bytes: int
  peak_bf16_flops: float  # Per second.
  hbm_bandwidth: float  # Bytes per second.


# Published per-chip figures (Google's Cloud TPU pages, checked 2026-12):
# v4: cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM, 1,200 GB/s.
# v5e: cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s (16 GiB
#   parts: the compiler reports 15.75 GiB available).
# v5p: cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM, 2,765 GB/s.
# v6e: cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM, 1,638 GB/s.
# Topology names and chip configs as MaxText's accelerator_to_spec_map.py (v4-8
# "v4:2x2x1" megacore; v5e-16 "v5e:4x4"; v5p-8 "v5:2x2x1" megacore; v6e-256 "v6e:16x16").
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "megacore", 2, 3, 4096, 32 * GIB, 275e12, 1200e9),
    "v5e": Chip("v5e", "default", 1, 2, 256, 16 * GIB, 197e12, 819e9),
    "v5p": Chip("v5", "megacore", 2, 3, 4096, 95 * GIB, 459e12, 2765e9),
    "v6e": Chip("v6e", "default", 1, 2, 256, 32 * GIB, 918e12, 1638e9),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice: `name` (the accelerator type, e.g. 'v5e-8') and libtpu's arguments for it."""
  name: str
  generation: str
  chips: int
  topology_name: str  # e.g. 'v5e:2x4'.
  chips_per_host_bounds: tuple[int, int, int]

  @property
  def chip(self) -> Chip:
    return CHIPS[self.generation]

  @property
  def accelerator_type(self) -> str:
    """Cloud TPU's name of the slice ('v5litepod-8' for v5e-8)."""
    return self.name.replace("v5e-", "v5litepod-")


def parse_topology(name: str) -> Topology:
  """'v5e-8' -> its chips (8), libtpu's name ('v5e:2x4') and host bounds; ConfigError for a
  name that is not a slice named here. v4 and v5p count TensorCores (2 per chip), v5e and
  v6e chips, as Cloud TPU's accelerator types do."""
  match = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", str(name))
  chip = CHIPS[match.group(1)] if match else None
  cores = int(match.group(2)) if match else 0
  chips = cores // chip.cores_per_chip if chip else 0
  if not chip or cores % chip.cores_per_chip or chips not in slice_sizes(chip):
    raise config_checks.ConfigError(
        f"compile_check.topology={name!r} is not a TPU slice this check knows: "
        f"{', '.join(f'{g}-N' for g in CHIPS)} with N a power of two, e.g. v4-8 (4 chips), "
        f"v5p-8, v5e-8, v6e-256 (v4 and v5p count TensorCores, 2 per chip; v5e and v6e "
        f"chips, 1, 4, 8, ... 256).")
  shape = _torus_shape(chips, chip.dims)
  single_host = (2, 4, 1) if chips == 8 and chip.dims == 2 else (2, 2, 1)
  bounds = (1, 1, 1) if chips == 1 else single_host
  return Topology(name, match.group(1), chips, f"{chip.prefix}:{'x'.join(map(str, shape))}", bounds)


def slice_sizes(chip: Chip) -> list[int]:
  """The chip counts named here: powers of two from the smallest slice (3-D: 4 chips;
  2-D: 1, then 4) to `max_chips`."""
  smallest = 4 if chip.dims == 3 else 1
  return [n for n in (2**k for k in range(int(math.log2(chip.max_chips)) + 1))
          if n >= smallest and n != 2]


def _torus_shape(chips: int, dims: int) -> tuple[int, ...]:
  """A power-of-two chip count as the slice's torus: 2-D 8 -> (2, 4), 3-D 4 -> (2, 2, 1),
  32 -> (2, 4, 4) (Cloud TPU's shapes)."""
  if dims == 3 and chips == 4:
    return (2, 2, 1)
  k = int(math.log2(chips))
  return tuple(2 ** ((k + i) // dims) for i in range(dims))


def check_config(config) -> None:
  """ConfigError, before anything compiles: a topology not known, a model that cannot work,
  a batch that does not split over the slice's chips, or libtpu missing."""
  topology = parse_topology(config.compile_check.topology)
  model_lib.check_model_config(config)
  optim.check_config("optimizer", config.optimizer)
  config_checks.require(
      isinstance(config.batch_size, int) and config.batch_size > 0
      and config.batch_size % topology.chips == 0,
      f"batch_size={config.batch_size} does not split over the {topology.chips} chips of "
      f"{topology.name}: use a multiple of {topology.chips}.")
  check_libtpu()


def check_libtpu() -> None:
  if importlib.util.find_spec("libtpu") is None:
    raise config_checks.ConfigError(
        f"compile_check needs libtpu: {INSTALL} (the TPU compiler; no TPU is needed, the "
        f"step is compiled here), then run the same command again.")


def topology_devices(topology: Topology) -> list:
  """The slice's devices, without the hardware (libtpu's topology description)."""
  stages.set_environment("compile_check")  # main.py's; again for a call from Python.
  # What a TPU VM's metadata would tell libtpu (it warns on stderr without them); the
  # compiled program is the same with or without them.
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return topologies.get_topology_desc(
        topology_name=topology.topology_name, platform="tpu",
        chip_config_name=topology.chip.chip_config,
        chips_per_host_bounds=topology.chips_per_host_bounds, num_slices=1).devices
  except (RuntimeError, ValueError) as e:  # libtpu's own (XlaRuntimeError is a RuntimeError).
    raise config_checks.ConfigError(
        f"libtpu could not describe {topology.name} ({topology.topology_name}): "
        f"{_first_line(e)} (the libtpu that matches this JAX: {INSTALL}).") from None


def compile_check(config, workdir: str) -> dict[str, Any]:
  """Compiles the pretraining step for config.compile_check.topology; prints the table and
  returns and writes compile_check.json."""
  check_config(config)
  topology = parse_topology(config.compile_check.topology)
  devices = topology_devices(topology)
  mesh = create_mesh(devices)
  step, tx, probe_classes = nominal_step(config, mesh)
  state = abstract_train_state(config, tx, mesh, probe_classes)
  batch = abstract_batch(config, mesh)
  logging.info("Compiling the %s step for %s (%d chips, %s) at batch %d (%d images per "
               "chip)...", config.method, topology.name, topology.chips,
               topology.topology_name, config.batch_size, config.batch_size // topology.chips)
  start = time.perf_counter()
  compiled, error = _compile(step, state, batch, mesh)
  seconds = time.perf_counter() - start
  summary = summarize(topology, config, _nbytes(state), _nbytes(batch) // topology.chips,
                      compiled, error, seconds, devices[0].device_kind)
  if config.compile_check.search_largest_batch:
    summary["largest_images_per_chip"] = _search_largest_batch(
        config, topology, step, state, mesh, summary["fits"])
  print(format_table(summary), flush=True)
  summaries.write_json(workdir, SUMMARY_FILE, summary)
  return summary


def nominal_step(config, mesh) -> tuple[Any, optax.GradientTransformation, int]:
  """The pretraining step as this check compiles it, reading no data: (the jit-compiled
  step over `mesh`, its optimiser, the online probe's classes (0 without one)). The
  schedules' length comes from NOMINAL_STEPS_PER_EPOCH (constants of the program: its
  memory and cost do not depend on them), the probe's classes from
  config.compile_check.probe_classes. benchmarks/readiness.py builds the same step."""
  num_train_steps = (config.num_train_steps if config.num_train_steps > 0 else
                     max(1, int(config.num_epochs * NOMINAL_STEPS_PER_EPOCH)))
  tx, schedule = create_optimizer(config, NOMINAL_STEPS_PER_EPOCH, num_train_steps)
  probe_classes = config.compile_check.probe_classes if config.online_probe else 0
  graphdef = model_lib.model_graphdef(config, probe_classes)
  step = compile_train_step(config, graphdef, tx, schedule, mesh, num_train_steps)
  return step, tx, probe_classes


def _search_largest_batch(config, topology: Topology, step, state, mesh, fits: bool) -> int:
  """The largest images per chip (a multiple of SEARCH_STEP) whose step compiles, by
  compiling it: the compiler, not a linear scaling of this batch's memory, knows."""

  def compiles(per_chip: int) -> bool:
    trial = config.copy_and_resolve_references()
    trial.batch_size = per_chip * topology.chips
    start = time.perf_counter()
    compiled, _ = _compile(step, state, abstract_batch(trial, mesh), mesh)
    logging.info("%d images per chip: %s (%.0f s).", per_chip,
                 "fits" if compiled else "does not fit", time.perf_counter() - start)
    return compiled is not None

  return largest_fitting(compiles, config.batch_size // topology.chips, fits)


SEARCH_STEP = 8  # Images per chip: the search's resolution.
SEARCH_LIMIT = 8192  # Images per chip: the search stops there.


def largest_fitting(fits, start: int, fits_at_start: bool, step: int = SEARCH_STEP,
                    limit: int = SEARCH_LIMIT) -> int:
  """The largest n (a multiple of `step`, at most `limit`; 0 if not even `step`) with
  fits(n), given fits(start) == fits_at_start, for a `fits` true up to some n and false
  above: doubling (or halving) from `start` to bracket it, then bisection."""
  low, high = (start, None) if fits_at_start else (0, start)
  while high is None:  # Double until a batch does not fit.
    if low >= limit:
      return low
    trial = min(2 * low, limit)
    low, high = (trial, None) if fits(trial) else (low, trial)
  while low == 0 and high > step:  # Halve until one fits.
    trial = max(step, high // 2 // step * step)
    low, high = (trial, high) if fits(trial) else (0, trial)
  while high - low > step:
    middle = (low + high) // 2 // step * step
    low, high = (middle, high) if fits(middle) else (low, middle)
  return low


def _compile(step, state, batch, mesh):
  """(the compiled step, None), or (None, XLA's RESOURCE_EXHAUSTED message): not fitting is a
  result. Without the persistent compilation cache: a program compiled for devices this
  process has no client for can be neither read from it nor run."""
  try:
    with compile_cache.disabled(), jax.set_mesh(mesh):
      return step.lower(state, batch).compile(), None
  except RuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return None, str(e)


def summarize(topology: Topology, config, state_bytes: int, batch_bytes: int, compiled,
              error: str | None, seconds: float, device_kind: str) -> dict[str, Any]:
  """The JSON summary, per chip, from the compiled step (or the compiler's out-of-memory
  `error`)."""
  chip = topology.chip
  views = 2 * config.batch_size // topology.chips
  summary = {"topology": topology.name, "topology_name": topology.topology_name,
             "device_kind": device_kind, "chips": topology.chips,
             "hosts": topology.chips // math.prod(topology.chips_per_host_bounds) or 1,
             "method": config.method, "compute_dtype": config.compute_dtype,
             "image_size": config.augment.image_size, "batch_size": config.batch_size,
             "images_per_chip": config.batch_size // topology.chips, "views_per_chip": views,
             "compile_seconds": round(seconds, 1), "hbm_bytes": chip.hbm_bytes,
             "peak_bf16_flops": chip.peak_bf16_flops, "hbm_bandwidth": chip.hbm_bandwidth,
             "state_bytes": state_bytes, "batch_bytes": batch_bytes}
  if compiled is None:
    needed, available = out_of_memory_sizes(error)
    return {**summary, "fits": False, "needed_bytes": needed, "available_bytes": available,
            "error": _first_line(error)}
  memory = compiled.memory_analysis()
  sizes = {name: int(getattr(memory, f"{name}_size_in_bytes"))
           for name in ("argument", "output", "alias", "temp", "generated_code")}
  total = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # Older JAX: one per module.
  flops_per_view = float(cost.get("flops", 0.0)) / views
  bytes_per_view = float(cost.get("bytes accessed", 0.0)) / views
  return {**summary, **{f"{name}_bytes": value for name, value in sizes.items()},
          "total_bytes": total, "fits": total <= chip.hbm_bytes,
          "temp_bytes_per_view": sizes["temp"] / views, "flops_per_view": flops_per_view,
          "bytes_accessed_per_view": bytes_per_view,
          **roofline(flops_per_view, bytes_per_view, chip.peak_bf16_flops, chip.hbm_bandwidth),
          "collectives": collectives(compiled.as_text())}


def roofline(flops_per_view: float, bytes_per_view: float, peak_flops: float,
             bandwidth: float) -> dict[str, Any]:
  """The roofline bound on one chip's views/s: min(peak FLOP/s / FLOPs per view, HBM
  bandwidth / bytes per view), which term binds, and the MFU it implies (1.0 when compute
  binds: no step can beat it)."""
  compute = peak_flops / flops_per_view if flops_per_view else math.inf
  memory = bandwidth / bytes_per_view if bytes_per_view else math.inf
  bound = min(compute, memory)
  return {"views_per_second_bound": bound, "compute_bound_views_per_second": compute,
          "memory_bound_views_per_second": memory,
          "bound_by": "compute" if compute <= memory else "memory",
          "mfu_at_bound": bound * flops_per_view / peak_flops}


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
                "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def collectives(hlo: str) -> dict[str, dict[str, int]]:
  """Each collective of the compiled program (BatchNorm's all-reduces, the loss's gathers):
  how many, and the bytes of their results per chip per step (what each chip receives, to
  within the algorithm's factor: a ring all-reduce moves about twice it), from its HLO."""
  found = {op: {"count": 0, "result_bytes": 0} for op in COLLECTIVES}
  ops = "|".join(COLLECTIVES)
  for result_type, op in re.findall(rf"= (.+?) ({ops})(?:-start)?\(", hlo):
    found[op]["count"] += 1
    found[op]["result_bytes"] += sum(
        _DTYPE_BYTES.get(dtype, 4) * math.prod(int(n) for n in dims.split(",") if n)
        for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", result_type))
  return found


def format_table(summary: dict[str, Any]) -> str:
  """The summary as a table for the terminal, one row per figure (per chip)."""
  gib = lambda b: ("?" if b is None else f"{b / GIB:.2f} GiB" if b >= GIB / 10 else
                   f"{b / 2**20:.1f} MiB")
  s = summary
  rows = [("topology", (f"{s['topology']} ({s['chips']} chips, {s['device_kind']}, "
                        f"{s['topology_name']})")),
          ("batch", (f"{s['batch_size']} ({s['images_per_chip']} images, "
                     f"{s['views_per_chip']} views per chip), {s['compute_dtype']}")),
          ("state + batch", f"{gib(s['state_bytes'])} + {gib(s['batch_bytes'])}"),
          ("HBM per chip", gib(s["hbm_bytes"]))]
  if "error" in s:
    rows += [("fits", (f"NO: the compiler needs {gib(s['needed_bytes'])} of "
                       f"{gib(s['available_bytes'])} available (RESOURCE_EXHAUSTED)")),
             ("compiler", s["error"][:200])]
  else:
    slice_rate = s["views_per_second_bound"] * s["chips"]
    rows += [("arguments", gib(s["argument_bytes"])),
             ("temporaries", (f"{gib(s['temp_bytes'])} "
                              f"({s['temp_bytes_per_view'] / 2**20:.1f} MiB per view)")),
             ("total", (f"{gib(s['total_bytes'])} of {gib(s['hbm_bytes'])}: "
                        f"{'fits' if s['fits'] else 'does NOT fit'}")),
             ("per view", (f"{s['flops_per_view'] / 1e9:.2f} GFLOP, "
                           f"{s['bytes_accessed_per_view'] / 1e6:.1f} MB accessed")),
             ("roofline", (f"{s['views_per_second_bound']:,.0f} views/s per chip "
                           f"({s['bound_by']}-bound; MFU at the bound {s['mfu_at_bound']:.0%}), "
                           f"{slice_rate:,.0f} for the slice"
                           + ("" if s["compute_dtype"] == "bfloat16" else
                              f" (against bf16's peak; this config computes in "
                              f"{s['compute_dtype']})"))),
             ("collectives", ", ".join(
                 f"{c['count']} {op} ({gib(c['result_bytes'])})"
                 for op, c in s["collectives"].items() if c["count"]) + " per step")]
  if "largest_images_per_chip" in s:
    largest = s["largest_images_per_chip"]
    rows.append(("largest batch", (f"{'at least ' if largest >= SEARCH_LIMIT else ''}"
                                   f"{largest} images per chip ({largest * s['chips']} for "
                                   f"the slice) compile")))
  rows.append(("compile", f"{s['compile_seconds']:.0f} s"))
  width = max(len(name) for name, _ in rows)
  return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _nbytes(tree) -> int:
  return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def _first_line(error) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__
