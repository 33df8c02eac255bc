"""TensorFlow's thread and device settings (input_pipeline.configure_tensorflow), each in a
fresh process: they can only be set before TensorFlow runs an op."""

import os
import subprocess
import sys

from tests.support import paths


def _run_python(code: str) -> subprocess.CompletedProcess:
  root = str(paths.REPO)
  env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        check=True, env=env, cwd=root, timeout=300)


def test_configure_tensorflow_keeps_ops_on_the_calling_thread():
  """In a fresh process: one intra-op thread and no GPU for TensorFlow; a second call, after
  TensorFlow has run ops, leaves the settings as they are instead of raising."""
  out = _run_python("import tensorflow as tf\n"
                    "from simclr_jax.data import input_pipeline\n"
                    "input_pipeline.configure_tensorflow()\n"
                    "tf.constant(1.0) + 1.0\n"
                    "input_pipeline.configure_tensorflow()\n"
                    "print(tf.config.threading.get_intra_op_parallelism_threads(),"
                    " len(tf.config.get_visible_devices('GPU')))\n")
  assert out.stdout.split()[-2:] == ["1", "0"]
  assert "configure_tensorflow()" not in out.stderr  # Already set: nothing to warn about.


def test_configure_tensorflow_too_late_warns():
  """Called after TensorFlow has run an op, it cannot change the threading: it says so."""
  out = _run_python("import tensorflow as tf\n"
                    "from simclr_jax.data import input_pipeline\n"
                    "tf.constant(1.0) + 1.0\n"
                    "input_pipeline.configure_tensorflow()\n"
                    "print(tf.config.threading.get_intra_op_parallelism_threads())\n")
  assert out.stdout.split()[-1] == "0"
  assert "ran an op before input_pipeline.configure_tensorflow()" in out.stderr
