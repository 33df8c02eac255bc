"""Process-level set-up and dispatch of the stages (what main.py calls)."""

from __future__ import annotations

import os

import jax
from absl import logging

from simclr_jax import input_pipeline


def initialize_distributed() -> None:
  """Joins a multi-host run (TPU VMs and clusters JAX detects); no-op on one host."""
  if os.environ.get("SIMCLR_NO_DISTRIBUTED"):
    return
  try:
    jax.distributed.initialize()
  except (ValueError, RuntimeError) as e:  # Not in a recognised cluster: single process.
    logging.info("Single-process run (jax.distributed.initialize: %s).", e)


def run(config, workdir: str, mode: str) -> None:
  initialize_distributed()
  input_pipeline.hide_accelerators_from_tensorflow()
  logging.info("JAX %s: %d processes, %d devices (%s).", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  if mode in ("pretrain", "pretrain_and_eval"):
    from simclr_jax import train  # pylint: disable=g-import-not-at-top
    train.pretrain(config, workdir)
  if mode in ("linear_eval", "pretrain_and_eval"):
    from simclr_jax import linear_eval  # pylint: disable=g-import-not-at-top
    linear_eval.evaluate(config, workdir)
