"""main.py as a user runs it: clear errors, no tracebacks, before anything compiles."""

import os
import subprocess
import sys

import pytest

from tests.support import paths

ROOT = str(paths.REPO)


def run_main(*args, tmp_path):
  env = dict(os.environ, SIMCLR_NO_DISTRIBUTED="1", TFDS_DATA_DIR=str(tmp_path / "tfds"),
             XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "main.py", f"--workdir={tmp_path / 'work'}", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                        check=False)


def test_unknown_config_field_is_rejected(tmp_path):
  result = run_main("--config=configs/food101.py", "--config.batch_sizee=64", tmp_path=tmp_path)
  assert result.returncode != 0
  assert "batch_sizee" in result.stderr


@pytest.mark.parametrize("override, message", [
    ("--config.batch_size=12", "batch_size=12 does not divide across 8 devices"),
    ("--config.simclr.temperature=0", "simclr.temperature must be > 0"),
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


DEMO = "--config=configs/demo.py"


def _assert_one_error_line(result, *fragments):
  assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
  assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
  errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
  assert len(errors) == 1, result.stderr[-2000:]
  # Printed once: not also logged (an `E... runtime.py] <message>` line before it).
  assert result.stderr.count(errors[0][len("Error: "):]) == 1, result.stderr[-2000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


def test_unknown_config_field_is_one_line_with_the_suggestion(tmp_path):
  result = run_main(DEMO, "--config.model.depthh=18", tmp_path=tmp_path)
  _assert_one_error_line(result, "unknown config field 'depthh'", 'Did you mean "depth"',
                         "--config.model.depthh=18")


@pytest.mark.parametrize("override, message", [
    ("--config.log_every_steps=0", "log_every_steps must be a positive integer, got 0"),
    ("--config.checkpoint_every_steps=-5", "checkpoint_every_steps must be a positive integer"),
    ("--config.augment.image_size=4", ("augment.image_size=4 is too small for the ResNet "
                                       "with the small-image stem, which downsamples by 8: "
                                       "use at least 8")),
])
def test_bad_intervals_and_image_sizes_stop_before_compiling(override, message, tmp_path):
  _assert_one_error_line(run_main(DEMO, override, tmp_path=tmp_path), message)


def test_unwritable_workdir_is_one_line(tmp_path):
  (tmp_path / "a_file").write_text("")
  env = dict(os.environ, SIMCLR_NO_DISTRIBUTED="1", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "main.py", DEMO,
                           f"--workdir={tmp_path / 'a_file' / 'work'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
  _assert_one_error_line(result, "Cannot write to", "a_file/work")


def test_missing_data_dir_is_one_line(tmp_path):
  result = run_main("--config=configs/food101.py", "--config.dataset=folder",
                    f"--config.data_dir={tmp_path / 'nowhere'}", tmp_path=tmp_path)
  _assert_one_error_line(result, "nowhere (config.data_dir) does not exist")


def test_folder_splits_with_different_classes_are_one_line(tmp_path):
  for split, classes in (("train", ("ramen", "sushi")), ("test", ("sushi",))):
    for name in classes:
      (tmp_path / "data" / split / name).mkdir(parents=True)
      (tmp_path / "data" / split / name / "0.png").write_bytes(_PNG)
  result = run_main(DEMO, "--config.dataset=folder", f"--config.data_dir={tmp_path / 'data'}",
                    tmp_path=tmp_path)
  _assert_one_error_line(result, "lacks ramen")


def test_unreadable_checkpoints_stop_cleanly_not_from_scratch(tmp_path):
  """Only damaged checkpoints: one error line, no traceback from Orbax's threads at exit."""
  step = tmp_path / "work" / "checkpoints" / "3"
  step.mkdir(parents=True)
  (step / "_CHECKPOINT_METADATA").write_text("{trunc")
  result = run_main(DEMO, "--config.model.width_multiplier=0.0625", tmp_path=tmp_path)
  _assert_one_error_line(result, "No readable checkpoint in", "step 3")


# A 1x1 PNG (what the folder source checks: magic bytes and the IEND chunk).
_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                     "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


# A process each (about 20 s): one in the default suite, the others with the slow ones (the
# stages' own tests raise NoCheckpointError in-process).
@pytest.mark.parametrize("mode", [pytest.param("linear_eval", marks=pytest.mark.slow),
                                  pytest.param("finetune", marks=pytest.mark.slow), "export",
                                  pytest.param("extract_features", marks=pytest.mark.slow)])
def test_stages_without_a_pretraining_checkpoint_say_so_in_one_line(mode, tmp_path):
  result = run_main(DEMO, f"--mode={mode}", tmp_path=tmp_path)
  _assert_one_error_line(result, "No pretraining checkpoint", str(tmp_path / "work"))


@pytest.mark.slow  # finetune_test checks the message in-process.
def test_a_bad_label_fraction_is_one_line(tmp_path):
  result = run_main(DEMO, "--mode=finetune", "--config.finetune.label_fraction=0",
                    tmp_path=tmp_path)
  _assert_one_error_line(result, "finetune.label_fraction must be in (0, 1]")


def test_a_wrong_config_path_from_another_folder_is_one_line_and_nothing_else(tmp_path):
  """Before JAX or TensorFlow load (the walkthrough's #15 took 17 s and two tracebacks)."""
  env = dict(os.environ, SIMCLR_NO_DISTRIBUTED="1", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"),
                           "--config=configs/food101x.py", f"--workdir={tmp_path}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
  assert result.returncode == 1 and result.stdout == ""
  assert result.stderr.startswith("Error: config file configs/food101x.py not found (looked in "
                                  f"{tmp_path} and {ROOT}; did you mean configs/food101.py?")
  assert result.stderr.count("\n") == 1, result.stderr


def test_help_lists_the_configs_without_loading_jax_or_tensorflow():
  script = ("import runpy, sys\n"
            "sys.argv = ['main.py', '--help']\n"
            "try:\n  runpy.run_path('main.py', run_name='__main__')\n"
            "except SystemExit:\n  pass\n"
            "print('loaded:', sorted({'jax', 'tensorflow'} & set(sys.modules)))\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
  assert "configs/food101_finetune.py[:ARG]" in result.stdout, result.stdout
  assert "METHOD: simclr (default), byol, mocov3, vicreg" in result.stdout
  assert "show_config" in result.stdout and result.stdout.endswith("loaded: []\n")
