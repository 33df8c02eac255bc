"""JAX's persistent compilation cache, and the log lines around a step's first compile.

A compiled step is written to config.compilation_cache_dir (by process 0 only: JAX's rule,
so that hosts do not race on a shared folder), keyed by the program, the devices and the
JAX, XLA and compiler flags. A rerun, a resume or a later stage that compiles the same
program loads it from there instead of compiling it again (minutes for the ResNet-50 step
on a TPU). JAX's thresholds apply: only programs that took over 1 s to compile are written
(the steps; not the many small helpers).
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import threading
import time
from collections.abc import Callable, Iterator

import jax
import jax.monitoring
from absl import logging
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from simclr_jax import storage

# jax.monitoring events (jax/_src/dispatch.py, jax/_src/compiler.py in jax 0.10.2): every
# backend compile, from scratch or from the cache, records the first (a scalar, its start
# time, as it begins; a duration as it ends); a cache hit records the second.
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def set_up(cache_dir: str | None) -> str | None:
  """Points JAX's persistent compilation cache at `cache_dir` (local, `~/...` or gs://);
  returns the folder in use, or None when the cache is off. Call before anything compiles.

  A folder JAX was given before (JAX_COMPILATION_CACHE_DIR, or the embedding program) is
  kept. '' or None leaves the cache off. A folder that cannot be written is a warning and
  the run compiles without the cache.
  """
  already = jax.config.jax_compilation_cache_dir
  if already:
    logging.info("Compilation cache: %s (set before the run: JAX_COMPILATION_CACHE_DIR "
                 "or jax.config).", already)
    return already
  if not cache_dir:
    logging.info("Compilation cache off (config.compilation_cache_dir is empty): every run "
                 "compiles its steps.")
    return None
  folder = str(storage.path(cache_dir).expanduser())  # '~/...'; gs:// unchanged.
  try:
    storage.ensure_writable_dir(folder)
  except storage.StorageError as e:
    logging.warning("Compilation cache off: %s (config.compilation_cache_dir; '' turns the "
                    "cache off without this warning)", str(e).rstrip("."))
    return None
  jax.config.update("jax_compilation_cache_dir", folder)
  logging.info("Compilation cache: %s (config.compilation_cache_dir): a rerun, resume or "
               "later stage of this config loads its compiled steps from there.", folder)
  return folder


@contextlib.contextmanager
def disabled() -> Iterator[None]:
  """No persistent compilation cache inside (e.g. a compile for devices this machine lacks).
  jax 0.10.2 decides whether a process uses the cache at its first compile and keeps that
  answer, so turning `jax_enable_compilation_cache` off alone does nothing after it: the
  cache's state is reset on the way in and out."""
  enabled = jax.config.jax_enable_compilation_cache
  _reset_quietly()
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    yield
  finally:
    _reset_quietly()
    jax.config.update("jax_enable_compilation_cache", enabled)


def _reset_quietly() -> None:
  """jax's reset_cache, without its "Resetting cache at ..." INFO line."""
  logger = std_logging.getLogger("jax._src.compilation_cache")
  level = logger.level
  logger.setLevel(std_logging.WARNING)
  try:
    jax_cache.reset_cache()
  finally:
    logger.setLevel(level)


class _CompileEvents:
  """Between start() and stop(): calls `on_first_compile` as the first backend compile
  begins (after tracing and lowering), and counts the compiles and the cache hits that JAX
  reports (from any thread)."""

  def __init__(self, on_first_compile: Callable[[], None]):
    self.compiles = 0
    self.cache_hits = 0
    self._on_first_compile = on_first_compile
    self._lock = threading.Lock()

  def _on_start(self, event: str, value: float, **kwargs) -> None:
    del value, kwargs
    if event == _COMPILE_EVENT:
      with self._lock:
        first = self._on_first_compile
        self._on_first_compile = None
      if first is not None:
        first()

  def _on_duration(self, event: str, duration_secs: float, **kwargs) -> None:
    del duration_secs, kwargs
    if event == _COMPILE_EVENT:
      with self._lock:
        self.compiles += 1

  def _on_event(self, event: str, **kwargs) -> None:
    del kwargs
    if event == _CACHE_HIT_EVENT:
      with self._lock:
        self.cache_hits += 1

  def start(self) -> None:
    jax.monitoring.register_scalar_listener(self._on_start)
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)
    jax.monitoring.register_event_listener(self._on_event)

  def stop(self) -> None:
    jax.monitoring.unregister_scalar_listener(self._on_start)
    jax.monitoring.unregister_event_duration_listener(self._on_duration)
    jax.monitoring.unregister_event_listener(self._on_event)


@contextlib.contextmanager
def logged_first_compile(what: str) -> Iterator[None]:
  """Around the first call of a jit-compiled step (`what`: 'the pretraining step'): a line
  as its compile begins, and one after it saying how long tracing and compiling took and
  whether the program came from the compilation cache. No line when nothing compiled (the
  step was compiled before in this process)."""
  events = _CompileEvents(lambda: logging.info(
      # JAX reports the compile's start before it knows whether the cache holds it.
      "Compiling %s, or loading it from the compilation cache (compiling takes minutes on "
      "a TPU, the first time for this config and machine) ...", what))
  events.start()
  start = time.perf_counter()
  try:
    yield
  finally:
    events.stop()
  seconds = time.perf_counter() - start
  if events.compiles == 0:
    return
  if events.cache_hits >= events.compiles:
    logging.info("Loaded %s from the compilation cache in %.1f s.", what, seconds)
  else:
    logging.info("Compiled %s in %.1f s.", what, seconds)
