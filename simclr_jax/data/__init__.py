"""The input side: sources, augmentations and tf.data pipelines (the only package that
imports TensorFlow; it imports no JAX model code). It meets the model at
`input_pipeline.global_batches` (host batches to global jax.Arrays).

TensorFlow is imported here, first, with its C++ start-up INFO lines left out (see
`_without_native_info_lines`); `--verbosity=1` (absl's `-v 1`) shows them.
"""

import contextlib
import os
import re
import sys
import tempfile

from absl import logging

# What TensorFlow's native libraries print on import, some of it twice: absl's notice that
# logging is not initialised, and INFO records ("I0000 00:00:1796311683.879839   17166
# port.cc:153] oneDNN custom operations are on ...", some followed by lines of their own).
# TensorFlow 2.21 prints them whatever TF_CPP_MIN_LOG_LEVEL says.
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog()"
_NATIVE_RECORD = re.compile(r"([IWEF])\d{4} [\d:.]+ +\d+ \S+:\d+\] ")


@contextlib.contextmanager
def _without_native_info_lines():
  """Runs the body with file descriptor 2 (native code's stderr) captured, then writes what
  it caught back to stderr less native INFO records: native warnings and errors still show."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as caught:
    os.dup2(caught.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      caught.seek(0)
      sys.stderr.write(_drop_native_info(caught.read().decode(errors="replace")))
      sys.stderr.flush()


def _drop_native_info(text: str) -> str:
  """`text` less absl's notice and native INFO records (with their continuation lines)."""
  kept, info = [], False
  for line in text.splitlines(keepends=True):
    record = _NATIVE_RECORD.match(line)
    if record or line.startswith(_ABSL_NOTICE):
      info = not record or record.group(1) == "I"
    if not info:
      kept.append(line)
  return "".join(kept)


_QUIET = "tensorflow" not in sys.modules and logging.get_verbosity() < logging.DEBUG
with _without_native_info_lines() if _QUIET else contextlib.nullcontext():
  import tensorflow  # noqa: F401  pylint: disable=unused-import
