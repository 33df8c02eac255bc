"""The one file-system layer: every path the project writes or lists goes through here.

Paths are `etils.epath` paths, so a local folder and a gs:// bucket (any scheme epath
knows; with TensorFlow installed its gs:// backend is tf.io.gfile) behave alike. A user
path is never made absolute and its scheme is kept: the old `os.path.abspath("gs://b")`
made a local folder named `gs:`. Problems the user fixes (a folder that cannot be written,
a missing path, a workdir that is not shared by all hosts) raise StorageError, whose
message is one line: the path, the reason, what to do.

TensorFlow is not imported here: its errors are caught only when it is already loaded
(it is whenever the gs:// backend ran).
"""

from __future__ import annotations

import json
import secrets
import sys
import uuid
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

# Written to the workdir by process 0 and read back by every process (multi-host runs).
WORKDIR_MARKER = ".simclr_workdir_id"
_MAX_REASON_CHARS = 300


class StorageError(ValueError):
  """A storage problem the user fixes; the message is one line (the path, the reason,
  what to do), whatever the backend's error said across lines."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


def _backend_errors() -> tuple[type[BaseException], ...]:
  """What a backend raises for a path it cannot read or write: OSError (local, and epath's
  translations), ImportError (gs:// without TensorFlow), NotImplementedError (a scheme or
  mode the backend lacks), and TensorFlow's OpError (permission denied, unreachable
  bucket, ...) when TensorFlow is loaded."""
  errors: tuple[type[BaseException], ...] = (OSError, ImportError, NotImplementedError)
  tf = sys.modules.get("tensorflow")
  op_error = getattr(getattr(tf, "errors", None), "OpError", None)
  if isinstance(op_error, type):
    errors += (op_error,)
  return errors


def _reason(error: BaseException) -> str:
  """The first line of an error, with its type: TensorFlow's can run to many lines."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
  return text[:_MAX_REASON_CHARS].rstrip(".")


def path(p) -> epath.Path:
  """A user path (str, os.PathLike or epath.Path) as an epath.Path: relative stays
  relative, gs:// stays gs://."""
  try:
    return epath.Path(p)
  except KeyError as e:  # epath's lookup of an unregistered `scheme://`.
    raise StorageError(f"Cannot use {p}: unknown scheme {e.args[0]!r}. Use a local path or "
                       f"a gs:// path.") from e


def ensure_writable_dir(p) -> epath.Path:
  """Creates the folder (and its parents) if needed and proves it writable by writing and
  deleting a small probe file; returns it. Raises StorageError otherwise."""
  folder = path(p)
  # Unique per call, so hosts probing one shared folder at once do not collide.
  probe = folder / f".simclr_write_probe_{uuid.uuid4().hex}"
  if folder.is_file():
    raise StorageError(f"{folder} is a file, not a folder: choose another path (a folder, "
                       f"new or existing).")
  try:
    folder.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"ok")
    probe.unlink()
  except _backend_errors() as e:
    raise StorageError(
        f"Cannot write to {folder}: {_reason(e)}. Check the path and its permissions (for "
        f"gs://: the bucket name and credentials), or choose another folder.") from e
  return folder


def require_existing(p, what: str) -> epath.Path:
  """The path, after checking that it exists; `what` names it for the user, e.g.
  "config.data_dir". Raises StorageError otherwise."""
  target = path(p)
  try:
    exists = target.exists()
  except _backend_errors() as e:
    raise StorageError(f"Cannot read {target} ({what}): {_reason(e)}. Check the path and "
                       f"its permissions (for gs://: the credentials).") from e
  if not exists:
    raise StorageError(f"{target} ({what}) does not exist. Check {what}: the path, and for "
                       f"gs:// the bucket name.")
  return target


def _write_whole(target: epath.Path, data: bytes) -> None:
  """Writes to a temporary name beside `target`, then renames it: a reader sees the old
  file or the new one, never half of one. A backend without rename gets a direct write."""
  target.parent.mkdir(parents=True, exist_ok=True)
  temporary = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
  temporary.write_bytes(data)
  try:
    temporary.replace(target)
  except NotImplementedError:
    target.write_bytes(data)
    temporary.unlink(missing_ok=True)


def write_bytes(p, data: bytes) -> None:
  """Writes `data` as the whole file `p` (parents created). Raises StorageError."""
  target = path(p)
  try:
    _write_whole(target, data)
  except _backend_errors() as e:
    raise StorageError(f"Cannot write {target}: {_reason(e)}. Check the path and its "
                       f"permissions (for gs://: the bucket name and credentials).") from e


def write_json(p, obj: Any) -> None:
  """`obj` as JSON (indent 2, sorted keys, trailing newline), written whole."""
  write_bytes(p, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(p) -> dict[str, Any]:
  """The JSON object stored at `p`, or {} when there is no such file."""
  source = path(p)
  try:
    if not source.exists():
      return {}
    text = source.read_text()
  except _backend_errors() as e:
    raise StorageError(f"Cannot read {source}: {_reason(e)}. Check the path and its "
                       f"permissions (for gs://: the credentials).") from e
  try:
    return json.loads(text)
  except ValueError as e:
    raise StorageError(f"{source} is not valid JSON ({e}): delete it or restore it.") from e


# Per-process outcomes of check_shared_workdir, all-gathered.
_SAME, _DIFFERENT, _UNREACHABLE = 0, 1, 2


def _marker_outcome(marker: epath.Path, token: str) -> int:
  try:
    if marker.exists() and marker.read_text().strip() == token:
      return _SAME
    return _DIFFERENT
  except _backend_errors() as e:
    logging.error("Cannot read %s: %s", marker, _reason(e))
    return _UNREACHABLE


def check_shared_workdir(workdir) -> None:
  """Multi-host runs: checks that every process sees the same workdir (checkpoints and
  summaries are written by some hosts and read by all). Process 0 writes a random token to
  workdir/WORKDIR_MARKER; after a barrier every process reads it back; the outcomes are
  all-gathered so that every process raises StorageError together, rather than one raising
  and the others hanging at the next collective. A no-op with one process.
  """
  if jax.process_count() == 1:
    return
  marker = path(workdir) / WORKDIR_MARKER
  # Two uint32 words: without jax_enable_x64 a 64-bit integer would be cut to 32 bits.
  words = (np.frombuffer(secrets.token_bytes(8), np.uint32) if jax.process_index() == 0
           else np.zeros(2, np.uint32))
  token = "-".join(str(int(w)) for w in multihost_utils.broadcast_one_to_all(words))
  written = _SAME
  if jax.process_index() == 0:
    try:
      _write_whole(marker, (token + "\n").encode())
    except _backend_errors() as e:
      logging.error("Cannot write %s: %s", marker, _reason(e))
      written = _UNREACHABLE
  multihost_utils.sync_global_devices("simclr_jax.storage.check_shared_workdir")
  outcome = written if written != _SAME else _marker_outcome(marker, token)
  outcomes = np.asarray(multihost_utils.process_allgather(np.int32(outcome))).reshape(-1)
  if (outcomes == _SAME).all():
    return
  unreachable = [k for k, o in enumerate(outcomes) if o == _UNREACHABLE]
  different = [k for k, o in enumerate(outcomes) if o == _DIFFERENT]
  problems = []
  if different:
    problems.append(f"process {', '.join(map(str, different))} sees a different workdir "
                    f"than process 0 (the {WORKDIR_MARKER} that process 0 wrote is missing "
                    f"or differs there)")
  if unreachable:
    problems.append(f"process {', '.join(map(str, unreachable))} cannot write or read it "
                    f"(see that process's log)")
  raise StorageError(f"Workdir {path(workdir)}: {'; '.join(problems)}. The workdir must be "
                     f"shared by all hosts, e.g. a gs:// bucket.")
