"""The storage layer on a non-local scheme (ram://, offline) and on local folders: JSON
summaries, the t-SNE PNG, writable and existing folders, the shared-workdir check; and
nothing a ram:// path names lands in the current directory (the old `gs:` folder bug)."""

import json

import jax
import numpy as np
import pytest
import tensorflow as tf
from etils import epath
from jax.experimental import multihost_utils

from simclr_jax import storage
from simclr_jax.evaluation import visualize
from simclr_jax.training import summaries
from tests.support.ram_fs import RamPath


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
  """Runs the test in an empty current directory and checks that it stays empty."""
  monkeypatch.chdir(tmp_path)
  yield tmp_path
  assert not list(tmp_path.iterdir()), "something was written to the current directory"


def test_path_keeps_schemes_and_relative_paths():
  assert str(storage.path("gs://bucket/runs/a")) == "gs://bucket/runs/a"
  assert str(storage.path("gs://bucket/runs") / "a.json") == "gs://bucket/runs/a.json"
  assert str(storage.path("runs/a")) == "runs/a"  # Not made absolute.
  ram = storage.path("ram://x/y")
  assert isinstance(ram, RamPath) and str(ram / "z") == "ram://x/y/z"
  assert storage.path(ram) == ram and isinstance(storage.path(ram), RamPath)
  assert str(storage.path(epath.Path("/tmp") / "b")) == "/tmp/b"


def test_unknown_scheme_is_a_storage_error():
  with pytest.raises(storage.StorageError, match="unknown scheme 'nope://'"):
    storage.path("nope://bucket/x")


def test_summaries_round_trip_on_ram(ram_root, empty_cwd):
  workdir = f"{ram_root}/runs/a"  # Does not exist yet: write_json makes it.
  summary = {"step": 3, "loss": 0.5, "name": "démo"}
  written = summaries.write_json(workdir, "pretrain_summary.json", summary)
  assert written == f"{workdir}/pretrain_summary.json"
  text = tf.io.gfile.GFile(written, "r").read()
  assert text == json.dumps(summary, indent=2, sort_keys=True) + "\n"
  assert summaries.read_json(workdir, "pretrain_summary.json") == summary
  assert summaries.read_json(workdir, "missing.json") == {}
  # Rewriting replaces the whole file and leaves no temporary file behind.
  summaries.write_json(workdir, "pretrain_summary.json", {"step": 4})
  assert summaries.read_json(workdir, "pretrain_summary.json") == {"step": 4}
  assert tf.io.gfile.listdir(workdir) == ["pretrain_summary.json"]


def test_summaries_are_written_by_process_0_only(ram_root, empty_cwd, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  written = summaries.write_json(ram_root, "s.json", {"step": 1})
  assert written == f"{ram_root}/s.json" and not tf.io.gfile.exists(written)


def test_read_json_of_a_corrupt_file_is_a_storage_error(ram_root, empty_cwd):
  storage.write_bytes(f"{ram_root}/half.json", b'{"step": ')
  with pytest.raises(storage.StorageError, match="is not valid JSON"):
    storage.read_json(f"{ram_root}/half.json")


def test_tsne_png_on_ram(ram_root, empty_cwd):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 12)
  features = rng.normal(size=(36, 4)) + 10 * labels[:, None]
  path = f"{ram_root}/eval/tsne.png"
  picture = visualize.tsne_map(features, labels, path, "test", max_points=30)
  png = tf.io.gfile.GFile(path, "rb").read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  decoded = tf.io.decode_png(png, channels=3).numpy()
  assert decoded.shape == picture.shape and picture.dtype == np.uint8


def test_ensure_writable_dir_on_ram(ram_root, empty_cwd):
  folder = storage.ensure_writable_dir(f"{ram_root}/a/b")
  assert isinstance(folder, RamPath) and str(folder) == f"{ram_root}/a/b"
  assert tf.io.gfile.isdir(f"{ram_root}/a/b")
  assert tf.io.gfile.listdir(f"{ram_root}/a/b") == []  # The probe was deleted.
  assert storage.ensure_writable_dir(folder) == folder  # Existing: fine too.


def test_ensure_writable_dir_keeps_a_relative_path_relative(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  folder = storage.ensure_writable_dir("runs/a")
  assert str(folder) == "runs/a"
  assert (tmp_path / "runs" / "a").is_dir() and not list((tmp_path / "runs" / "a").iterdir())


def test_ensure_writable_dir_that_cannot_be_made_is_a_one_line_error(tmp_path):
  # Tests run as root, which ignores chmod: a folder under a regular file cannot be made.
  (tmp_path / "afile").write_text("a file, not a folder")
  target = tmp_path / "afile" / "work"
  with pytest.raises(storage.StorageError) as raised:
    storage.ensure_writable_dir(target)
  message = str(raised.value)
  assert "\n" not in message and isinstance(raised.value, ValueError)
  assert message.startswith(f"Cannot write to {target}: ")
  assert "Error" in message and "choose another folder" in message  # The reason, the fix.


def test_storage_error_folds_a_multi_line_reason_into_one_line():
  assert str(storage.StorageError("Cannot write to x: first\n  second.\n")) == (
      "Cannot write to x: first second.")


def test_require_existing(ram_root, empty_cwd):
  tf.io.gfile.makedirs(f"{ram_root}/data")
  assert str(storage.require_existing(f"{ram_root}/data", "config.data_dir")) == (
      f"{ram_root}/data")
  with pytest.raises(storage.StorageError) as raised:
    storage.require_existing(f"{ram_root}/nowhere", "config.data_dir")
  message = str(raised.value)
  assert f"{ram_root}/nowhere" in message and "config.data_dir" in message
  assert "does not exist" in message and "\n" not in message


def test_check_shared_workdir_is_a_no_op_in_one_process(tmp_path, monkeypatch):
  def collective(*args, **kwargs):
    raise AssertionError("no collective in a single-process run")
  for name in ("broadcast_one_to_all", "sync_global_devices", "process_allgather"):
    monkeypatch.setattr(multihost_utils, name, collective)
  assert jax.process_count() == 1
  storage.check_shared_workdir(tmp_path)
  assert not list(tmp_path.iterdir())  # No marker written.


def _two_processes(monkeypatch, index, token=None, others_outcome=0):
  """Plays process `index` of two: the broadcast hands out process 0's words (or `token`
  for process 1), and the all-gather adds the other process's outcome."""
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: index)
  sent = {}

  def broadcast(words):
    sent["words"] = np.asarray(words if token is None else token)
    return sent["words"]

  def allgather(outcome):
    both = [int(outcome), others_outcome] if index == 0 else [others_outcome, int(outcome)]
    return np.array(both, np.int32)

  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
  monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: None)
  monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
  return sent


def test_check_shared_workdir_passes_when_both_processes_see_the_marker(
    ram_root, empty_cwd, monkeypatch):
  sent = _two_processes(monkeypatch, 0)
  storage.check_shared_workdir(ram_root)
  assert tf.io.gfile.exists(f"{ram_root}/{storage.WORKDIR_MARKER}")
  # Process 1 on the same (shared) folder reads back process 0's token.
  _two_processes(monkeypatch, 1, token=sent["words"])
  storage.check_shared_workdir(ram_root)


def test_check_shared_workdir_raises_on_every_process_when_one_sees_another_folder(
    ram_root, tmp_path, monkeypatch):
  # Process 1's workdir is its own local folder: process 0's marker is not there.
  _two_processes(monkeypatch, 1, token=np.array([7, 9], np.uint32))
  with pytest.raises(storage.StorageError, match="process 1 sees a different workdir") as e:
    storage.check_shared_workdir(tmp_path / "work")
  assert "shared by all hosts" in str(e.value) and "\n" not in str(e.value)
  # Process 0 saw its own marker, yet raises too rather than hanging at a later collective.
  _two_processes(monkeypatch, 0, others_outcome=1)
  with pytest.raises(storage.StorageError, match="process 1 sees a different workdir"):
    storage.check_shared_workdir(ram_root)


def test_a_workdir_that_is_a_file_is_named_as_such(tmp_path):
  (tmp_path / "afile").write_text("a file, not a folder")
  with pytest.raises(storage.StorageError, match=r"^\S+/afile is a file, not a folder: choose "):
    storage.ensure_writable_dir(tmp_path / "afile")
  assert (tmp_path / "afile").read_text() == "a file, not a folder"  # Left as it was.
