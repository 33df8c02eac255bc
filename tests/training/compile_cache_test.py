"""The compilation cache's set-up (which folder, a folder that cannot be written) and the log
lines around a first compile, against JAX's own cache (conftest.py's, in this process)."""

import logging
import uuid

import jax
import jax.numpy as jnp
import pytest

from simclr_jax.training import compile_cache

# pylint: disable=redefined-outer-name


@pytest.fixture
def no_cache_dir():
  """JAX with no cache folder set (as a fresh process), conftest's folder put back after.
  Nothing compiles in between, so the cache JAX has already opened is untouched."""
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)
  yield
  jax.config.update("jax_compilation_cache_dir", before)


def test_a_writable_folder_becomes_jax_s_cache(no_cache_dir, tmp_path):
  del no_cache_dir
  folder = str(tmp_path / "new" / "xla")
  assert compile_cache.set_up(folder) == folder
  assert jax.config.jax_compilation_cache_dir == folder
  assert (tmp_path / "new" / "xla").is_dir()


def test_a_home_relative_folder_is_expanded(no_cache_dir, tmp_path, monkeypatch):
  del no_cache_dir
  monkeypatch.setenv("HOME", str(tmp_path))
  assert compile_cache.set_up("~/.cache/xla") == str(tmp_path / ".cache" / "xla")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / ".cache" / "xla")


def test_an_unwritable_folder_is_a_warning_and_no_cache(no_cache_dir, tmp_path, caplog):
  del no_cache_dir
  (tmp_path / "a_file").write_text("")
  with caplog.at_level(logging.INFO):
    assert compile_cache.set_up(str(tmp_path / "a_file" / "xla")) is None
  assert jax.config.jax_compilation_cache_dir is None
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and warnings[0].startswith("Compilation cache off: Cannot write "
                                                        f"to {tmp_path / 'a_file' / 'xla'}")


def test_an_empty_folder_leaves_the_cache_off(no_cache_dir):
  del no_cache_dir
  assert compile_cache.set_up("") is None
  assert jax.config.jax_compilation_cache_dir is None


def test_a_folder_jax_was_given_before_is_kept(tmp_path):
  before = jax.config.jax_compilation_cache_dir  # conftest.py's
  assert before
  assert compile_cache.set_up(str(tmp_path / "other")) == before
  assert jax.config.jax_compilation_cache_dir == before
  assert not (tmp_path / "other").exists()


def _new_function(constant: float):
  """A new function object each call: jit's in-memory caches miss, the persistent one may
  not (same program)."""
  return jax.jit(lambda x: jnp.sin(x) * constant + jnp.cumsum(x))


def _lines(caplog):
  return [r.getMessage() for r in caplog.records if r.name == "absl"]


def test_the_first_compile_says_compiled_then_loaded_from_the_cache(caplog):
  constant = float(uuid.uuid4().int % 10**6)  # A program no earlier session compiled.
  x = jnp.arange(7.0)
  with caplog.at_level(logging.INFO):
    with compile_cache.logged_first_compile("the test step"):
      first = _new_function(constant)(x)
    with compile_cache.logged_first_compile("the test step"):  # Another process's view.
      second = _new_function(constant)(x)
    jitted = _new_function(constant)
    jitted(x)
    with compile_cache.logged_first_compile("the test step"):  # Compiled already here.
      jitted(x)
  lines = _lines(caplog)
  assert lines[0].startswith("Compiling the test step, or loading it from the compilation cache")
  assert lines[1].startswith("Compiled the test step in ") and lines[1].endswith(" s.")
  assert lines[3].startswith("Loaded the test step from the compilation cache in ")
  assert lines[2] == lines[0]
  assert lines[4:] == []  # Nothing compiled: no line.
  assert jnp.array_equal(first, second)


def test_disabled_neither_reads_nor_writes_the_cache_after_it_was_used(caplog):
  constant = float(uuid.uuid4().int % 10**6)
  x = jnp.arange(7.0)
  _new_function(constant)(x)  # The cache in use (and this program in it).
  with caplog.at_level(logging.INFO):
    with compile_cache.disabled(), compile_cache.logged_first_compile("the test step"):
      _new_function(constant)(x)
    with compile_cache.logged_first_compile("the test step"):  # On again.
      _new_function(constant)(x)
  assert not [r for r in caplog.records if "Resetting cache" in r.getMessage()]
  lines = _lines(caplog)
  assert lines[1].startswith("Compiled the test step in ")  # Not read from the cache.
  assert lines[3].startswith("Loaded the test step from the compilation cache in ")
