"""main.py as a user runs it: clear errors, no tracebacks, before anything compiles."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, tmp_path):
  env = dict(os.environ, SIMCLR_NO_DISTRIBUTED="1", TFDS_DATA_DIR=str(tmp_path / "tfds"),
             XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "main.py", f"--workdir={tmp_path / 'work'}", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_unknown_config_field_is_rejected(tmp_path):
  result = run_main("--config=configs/food101.py", "--config.batch_sizee=64", tmp_path=tmp_path)
  assert result.returncode != 0
  assert "batch_sizee" in result.stderr


@pytest.mark.parametrize("override, message", [
    ("--config.batch_size=12", "batch_size=12 does not divide across 8 devices"),
    ("--config.temperature=0", "temperature must be > 0"),
])
def test_bad_config_values_stop_with_a_message(override, message, tmp_path):
  result = run_main("--config=configs/food101.py", override, tmp_path=tmp_path)
  assert result.returncode == 1
  assert message in result.stderr
  assert "Traceback" not in result.stderr


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
  result = run_main("--config=configs/food101.py", tmp_path=tmp_path)
  assert result.returncode == 1
  assert "tfds build food101" in result.stderr and "--config.data_dir" in result.stderr
  assert "Traceback" not in result.stderr
