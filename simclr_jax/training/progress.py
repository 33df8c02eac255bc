"""Progress of a long loop (training steps, images encoded) as the person running it reads
it: on a terminal a live tqdm bar (count/total, percent, rate, elapsed, ETA), otherwise a
plain log line with the same fields each time the caller reports, e.g.

  Pretraining: step 120/600 (20%), 6.3 steps/s, elapsed 25s, ETA 1m16s, loss=7.48

Only process 0 shows progress; every process measures the rate (the training loop writes it
to TensorBoard). Rates count from the first `update`, so the caller leaves compilation out by
making its first update after the first step has run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping

import jax
import tqdm
from absl import logging
from tqdm.contrib import DummyTqdmFile


class Progress(contextlib.AbstractContextManager):
  """Progress from `initial` (a resumed run's step) to `total` `unit`s; a context manager
  (the bar closes, and log lines go back to plain stderr, on leaving it).

  Args:
    total: where the loop ends.
    label: what is progressing ("Pretraining", "Encoding 'train'").
    unit: what is counted ("step", "image").
    initial: where it starts.
    bar: a live bar rather than plain lines; default: whether stderr is a terminal
      (`is_terminal`).
    clock: seconds, for the rate (a fake one in tests).
  """

  def __init__(self, total: int, *, label: str, unit: str = "step", initial: int = 0,
               bar: bool | None = None, clock: Callable[[], float] = time.perf_counter):
    self.total, self.label, self.unit, self.position = total, label, unit, initial
    self.clock = clock
    self.shown = jax.process_index() == 0
    self.created = clock()
    self.first: tuple[int, float] | None = None  # (position, time) of the first update.
    use_bar = is_terminal(sys.stderr) if bar is None else bar
    self.bar = (_LiveBar(total, initial, label, unit) if self.shown and use_bar else None)

  def update(self, position: int) -> None:
    """The loop has reached `position` (cheap: call it every step)."""
    self.position = position
    if self.first is None:
      self.first = (position, self.clock())
    if self.bar is not None:
      self.bar.update(position)

  def rate(self) -> float | None:
    """Units per second since the first update; None until there are two."""
    if self.first is None or self.position <= self.first[0]:
      return None
    return (self.position - self.first[0]) / max(self.clock() - self.first[1], 1e-9)

  def report(self, metrics: Mapping[str, float] | None = None) -> None:
    """A point to tell the reader where the loop is: the plain line (with `metrics`), or on
    a bar `metrics` beside it."""
    if not self.shown:
      return
    if self.bar is not None:
      self.bar.set_metrics(metrics or {})
    else:
      logging.info("%s", self.line(metrics))

  def line(self, metrics: Mapping[str, float] | None = None) -> str:
    """'Pretraining: step 120/600 (20%), 6.3 steps/s, elapsed 25s, ETA 1m16s, loss=7.48'."""
    count = (f"step {self.position}/{self.total}" if self.unit == "step" else
             f"{self.position}/{self.total} {self.unit}s")
    fields = [f"{self.label}: {count} ({100 * self.position // max(self.total, 1)}%)"]
    rate = self.rate()
    if rate is not None:
      fields.append(f"{_number(rate)} {self.unit}s/s")
    fields.append(f"elapsed {duration(self.clock() - self.created)}")
    if rate is not None:
      fields.append(f"ETA {duration((self.total - self.position) / rate)}")
    fields += [f"{name}={value:.4g}" for name, value in (metrics or {}).items()]
    return ", ".join(fields)

  def __exit__(self, *exc_info) -> None:
    if self.bar is not None:
      self.bar.close()


class _LiveBar:
  """A tqdm bar on stderr; while it is open, whatever is written to stderr (log lines,
  warnings) is printed above it rather than through it."""

  def __init__(self, total: int, initial: int, label: str, unit: str):
    self.stderr = sys.stderr
    self.bar = tqdm.tqdm(total=total, initial=initial, desc=label, unit=unit,
                         file=self.stderr, dynamic_ncols=True)
    above = DummyTqdmFile(self.stderr)
    self.handler = logging.get_absl_handler().python_handler
    self.handler_stream = self.handler.stream
    if self.handler_stream is self.stderr:
      self.handler.setStream(above)
    sys.stderr = above

  def update(self, position: int) -> None:
    self.bar.update(position - self.bar.n)

  def set_metrics(self, metrics: Mapping[str, float]) -> None:
    self.bar.set_postfix({name: f"{value:.4g}" for name, value in metrics.items()},
                         refresh=False)

  def close(self) -> None:
    sys.stderr = self.stderr
    if self.handler.stream is not self.handler_stream:
      self.handler.setStream(self.handler_stream)
    self.bar.close()


def is_terminal(stream) -> bool:
  """Whether `stream` is a terminal a bar can be drawn on: not one of zero width, as a
  pseudo-terminal without a size (`script`, some `docker exec -t`) reports."""
  if not stream.isatty():
    return False
  try:
    return os.get_terminal_size(stream.fileno()).columns > 0
  except (OSError, ValueError):  # No file descriptor (a test's fake terminal): assume one.
    return True


def duration(seconds: float) -> str:
  """'8s', '1m16s', '2h05m'."""
  seconds = round(seconds)
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _number(rate: float) -> str:
  """A rate to about three significant digits: '0.452', '6.3', '716', '1,210'."""
  return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
