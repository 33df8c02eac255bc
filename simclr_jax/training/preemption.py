"""Stopping cleanly on SIGTERM or SIGINT (a preemption, `kill`, Ctrl-C).

The training loops ask `reached(step)` after every step. It turns True at one step, the
same on every process, after a signal reaches any of them; the loop then saves that step,
waits for the save to commit and raises `Preempted`, which the entry point turns into exit
status 0 and the command that resumes.

- One process: the signal sets a flag that the next `reached` reads (no host sync).
- Several processes: JAX's preemption sync point over the coordination service (its
  notifier owns SIGTERM; SIGINT is forwarded to it as SIGTERM). All processes agree on the
  step without a collective per step.

A second signal while the first is being handled stops the process at once (the default
action), for a user who does not want to wait for the save.
"""

from __future__ import annotations

import contextlib
import os
import signal

import jax
from absl import logging
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Raised by a stage after it saved the step where a stop signal was agreed."""

  def __init__(self, stage: str, step: int, checkpoint: str | None):
    saved = (f"saved {checkpoint}" if checkpoint else
             "nothing to save (it is recomputed when the run resumes)")
    super().__init__(f"{stage} stopped by a signal after step {step}; {saved}.")
    self.stage, self.step, self.checkpoint = stage, step, checkpoint


_state = {"signal": None, "calls": 0}


def _on_signal(signum, frame) -> None:
  del frame
  if _state["signal"] is not None:  # Second signal: give up waiting.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return
  _state["signal"] = signal.Signals(signum).name
  logging.warning("Received %s: finishing the step in flight, then saving a checkpoint of it "
                  "(send it again to stop at once, without saving).", _state["signal"])


def _forward_to_jax_notifier(signum, frame) -> None:
  del frame
  _state["signal"] = signal.Signals(signum).name
  logging.warning("Received %s: telling every process to stop at the next common step.",
                  _state["signal"])
  signal.signal(signum, signal.SIG_DFL)
  os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def handle_stop_signals():
  """Within it, SIGTERM / SIGINT request a clean stop instead of killing the process."""
  multi_process = jax.process_count() > 1
  handlers = ({signal.SIGINT: _forward_to_jax_notifier} if multi_process else
              {signum: _on_signal for signum in SIGNALS})
  previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    _state["signal"] = None


def reached() -> bool:
  """True when every process should stop after the step just taken. Call it after every
  step, on every process: the sync point numbers the calls, which only increase across
  stages (the steps of a second stage start again at 1)."""
  if jax.process_count() == 1:
    return _state["signal"] is not None
  _state["calls"] += 1
  try:
    return multihost_utils.reached_preemption_sync_point(_state["calls"])
  except RuntimeError:  # The preemption service is disabled (jax_enable_preemption_service).
    return False


def signal_name() -> str:
  return _state["signal"] or "a preemption notice"
