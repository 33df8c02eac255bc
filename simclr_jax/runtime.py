"""Process-level set-up and dispatch of the stages (what main.py calls)."""

from __future__ import annotations

import logging as std_logging
import os

import jax
from absl import logging

from simclr_jax import checkpoints, config_checks, input_pipeline, linear_eval, train


def initialize_distributed() -> None:
  """Joins a multi-host run (TPU VMs and clusters JAX detects); no-op on one host."""
  if os.environ.get("SIMCLR_NO_DISTRIBUTED"):
    return
  try:
    jax.distributed.initialize()
  except (ValueError, RuntimeError) as e:  # Not in a recognised cluster: single process.
    logging.info("Single-process run (jax.distributed.initialize: %s).", e)


class _QuietLibraryInfo(std_logging.Filter):
  """Drops Orbax's many per-save INFO lines; its warnings and errors still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def run(config, workdir: str, mode: str) -> None:
  """Runs the stages; errors a user can fix end the process with a message, no traceback."""
  user_errors = (config_checks.ConfigError, input_pipeline.DatasetNotFoundError,
                 checkpoints.CheckpointError, linear_eval.NoCheckpointError)
  logging.get_absl_handler().addFilter(_QuietLibraryInfo())
  try:
    _run_stages(config, workdir, mode)
  except user_errors as e:
    logging.error("%s", e)
    raise SystemExit(f"Error: {e}") from None


def _run_stages(config, workdir: str, mode: str) -> None:
  initialize_distributed()
  input_pipeline.configure_tensorflow()
  logging.info("JAX %s: %d processes, %d devices (%s).", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  if mode in ("pretrain", "pretrain_and_eval"):
    train.pretrain(config, workdir)
  if mode in ("linear_eval", "pretrain_and_eval"):
    linear_eval.evaluate(config, workdir)
