"""Small JSON summaries of what each stage measured, and text files such as the parameter
table, written to the workdir (local or gs://, through `storage`)."""

from __future__ import annotations

from typing import Any

import jax
from absl import logging

from simclr_jax import storage


def write_json(workdir, filename: str, summary: dict[str, Any]) -> str:
  """Writes `summary` to workdir/filename on process 0 (whole: a reader never sees half
  of it); returns the path."""
  target = storage.path(workdir) / filename
  if jax.process_index() == 0:
    storage.write_json(target, summary)
    logging.info("Wrote %s: %s", target, summary)
  return str(target)


def write_text(workdir, filename: str, text: str) -> str:
  """Writes `text` to workdir/filename on process 0; returns the path."""
  target = storage.path(workdir) / filename
  if jax.process_index() == 0:
    storage.write_bytes(target, text.encode())
  return str(target)


def read_json(workdir, filename: str) -> dict[str, Any]:
  """The summary written earlier, or {} if there is none."""
  return storage.read_json(storage.path(workdir) / filename)
