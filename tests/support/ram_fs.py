"""TensorFlow's in-memory file system, ram://, as an etils.epath scheme: a non-local path
that needs no network, for tests of the storage layer.

epath sends gs:// to tf.io.gfile (TensorFlow installed); RamPath sends ram:// there the
same way. Registering it is all a test needs: `epath.Path("ram://x")` is then a RamPath,
so the package's code sees a remote path it did not special-case.
"""

import sys
import uuid

import pytest
import tensorflow as tf
from etils import epath
from etils.epath import backend, gpath

SCHEME = "ram://"
_ROOT = "/ram/"  # How the parts hold the scheme, as epath keeps gs:// under /gs/.


def _ram_parts(parts) -> tuple:
  """`parts` with a leading ram:// kept as the /ram/ root (pathlib would fold its '//')."""
  full = "/".join(str(p) for p in parts)
  return (_ROOT + full[len(SCHEME):],) if full.startswith(SCHEME) else parts


@epath.register_path_cls(SCHEME)
class RamPath(gpath.PosixGPath):
  """A ram:// path: epath's gs:// handling with tf.io.gfile as the backend."""

  # As epath's own paths: pathlib builds paths in __new__ before Python 3.12, in __init__
  # from 3.12 on.
  if sys.version_info < (3, 12):

    def __new__(cls, *parts):
      return super().__new__(cls, *_ram_parts(parts))

  else:

    def __init__(self, *parts):
      super().__init__(*_ram_parts(parts))

  @property
  def _uri_scheme(self):
    return "ram" if self.parts[:2] == ("/", "ram") else None

  @property
  def _backend(self):
    return backend.tf_backend


@pytest.fixture
def ram_root():
  """A fresh ram:// folder name (not created), removed after the test."""
  root = f"{SCHEME}{uuid.uuid4().hex}"
  yield root
  if tf.io.gfile.exists(root):
    tf.io.gfile.rmtree(root)
