"""Small JSON summaries of what each stage measured, written to the workdir."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from absl import logging


def write_json(workdir: str, filename: str, summary: dict[str, Any]) -> str:
  """Writes `summary` to workdir/filename on process 0; returns the path."""
  path = os.path.join(workdir, filename)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
      f.write("\n")
    logging.info("Wrote %s: %s", path, summary)
  return path


def read_json(workdir: str, filename: str) -> dict[str, Any]:
  """The summary written earlier, or {} if there is none."""
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)
