"""Process-level set-up (multi-host, logging, storage checks, stop signals, errors as one
line) around the stages of a `--mode` (`stages.STAGES`): what main.py calls."""

from __future__ import annotations

import importlib
import logging as std_logging
import os
import shlex
import sys

import jax
from absl import logging

from simclr_jax import config_checks, stages, storage
from simclr_jax.data import input_pipeline, sources
from simclr_jax.training import checkpoints, compile_cache, faults, preemption

# Errors a user can fix: one `Error: ...` line and exit status 1, no traceback.
USER_ERRORS = (config_checks.ConfigError, sources.DatasetNotFoundError,
               checkpoints.CheckpointError, checkpoints.NoCheckpointError,
               storage.StorageError, faults.TrainingDivergedError)


def initialize_distributed() -> None:
  """Joins a multi-host run (TPU VMs and clusters JAX detects); no-op on one host.

  Where the environment says the run has several processes, a failed join ends the run
  with one `Error:` line: training on alone, each host would write into the shared workdir.
  SIMCLR_NO_DISTRIBUTED=1 skips the join (one process, whatever the environment says).
  """
  if os.environ.get("SIMCLR_NO_DISTRIBUTED"):
    return
  try:
    jax.distributed.initialize()
  except (ValueError, RuntimeError) as e:
    if expected := _several_processes_expected():
      cause = next((line.strip().rstrip(".") for line in str(e).splitlines() if line.strip()),
                   type(e).__name__)
      raise SystemExit(
          f"Error: {expected} says this run has several processes, but "
          f"jax.distributed.initialize() failed: {cause}. Fix the cluster set-up, or set "
          "SIMCLR_NO_DISTRIBUTED=1 to run this process alone.") from None
    # Not in a recognised cluster: single process.
    logging.debug("Single-process run (jax.distributed.initialize: %s).", e)


# The environment variables of JAX's cluster detection (jax/_src/clusters: GKE TPU,
# multislice, Slurm, Open MPI) that count a run's processes: "several" past 1.
_PROCESS_COUNT_VARIABLES = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES",
                            "MEGASCALE_NUM_SLICES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _several_processes_expected() -> str | None:
  """`NAME=value` of the first environment variable saying the run spans several
  processes (JAX_COORDINATOR_ADDRESS: set at all, a request to join), else None."""
  for name in _PROCESS_COUNT_VARIABLES:
    value = os.environ.get(name, "").strip()
    if name.startswith("TPU_"):  # Comma-separated hosts.
      count = len([host for host in value.split(",") if host.strip()])
    else:
      count = int(value) if value.isdigit() else 0
    if count > 1:
      return f"{name}={value}"
  if address := os.environ.get("JAX_COORDINATOR_ADDRESS", "").strip():
    return f"JAX_COORDINATOR_ADDRESS={address}"
  return None


class _QuietLibraries(std_logging.Filter):
  """Drops library lines a user does not need (`--verbosity=1` shows them): Orbax's many
  per-save INFO lines and its "Given directory is read only" warning (the stages that read
  a checkpoint open its directory read-only on purpose), JAX's INFO lines looking for a TPU
  on other machines, and clu's dump of the hyper-parameters and image shapes (they are in
  TensorBoard and WORKDIR/config/). Other warnings and errors still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if logging.get_verbosity() >= logging.DEBUG:
      return True
    if "/orbax/" in record.pathname:
      return (record.levelno >= std_logging.WARNING and
              not record.getMessage().startswith("Given directory is read only"))
    if record.name.startswith("jax._src.xla_bridge"):
      return record.levelno >= std_logging.WARNING
    if record.pathname.endswith("metric_writers/logging_writer.py"):
      message = record.getMessage()
      return "[Hyperparameters]" not in message and " Got images: " not in message
    return True


def run(config, workdir: str, mode: str) -> None:
  """Runs the stages. Errors a user can fix end the process with one line and status 1; a
  stop signal (SIGTERM, SIGINT) ends it with status 0 after saving the step reached."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    _run_stages(config, workdir, mode)
  except USER_ERRORS as e:
    # Printed once, by Python as it exits with status 1 (not logged as well).
    message = " ".join(str(e).split("\n", 1)[0].split())
    details = str(e).split("\n", 1)[1:]
    raise SystemExit(f"Error: {message}" + (f"\n{details[0]}" if details else "")) from None
  except preemption.Preempted as e:
    resume = shlex.join([os.path.basename(sys.executable), *sys.argv])
    logging.warning("%s Resume with the same command:\n  %s", e, resume)
    print(f"{e} Resume with the same command:\n  {resume}", flush=True)


def check_config(config, mode: str, first: int = 0) -> None:
  """The config checks of the stages of `mode` (`check_config` of each stage's module,
  where it has one), from its `first`: a ConfigError whose message names the field and,
  for a choice, the choices. Run before the first stage, so that a later stage's fields
  (the linear probe's, for --mode=pretrain_and_eval) fail before anything compiles."""
  for target in stages.STAGES[mode].runs[first:]:
    module = importlib.import_module(f"{stages.__name__}.{target.split(':')[0]}")
    if hasattr(module, "check_config"):
      module.check_config(config)


def check_storage(config, workdir: str) -> None:
  """Before anything compiles: the workdir is writable and the same for every process,
  and config.data_dir (when set) exists."""
  if jax.process_index() == 0:
    storage.ensure_writable_dir(workdir)
  storage.check_shared_workdir(workdir)
  if config.get("data_dir"):
    storage.require_existing(config.data_dir, "config.data_dir")


def _run_stages(config, workdir: str, mode: str) -> None:
  initialize_distributed()
  input_pipeline.configure_tensorflow()
  logging.info("JAX %s: %d processes, %d devices (%s).", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  check_config(config, mode, first=1)  # The first stage checks its own as it starts.
  check_storage(config, workdir)
  compile_cache.set_up(config.get("compilation_cache_dir"))
  with preemption.handle_stop_signals():
    stages.run(mode, config, workdir)
