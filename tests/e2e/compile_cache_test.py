"""Two fresh processes with the same config and one compilation cache folder: the first
compiles the pretraining step and writes it there, the second loads it instead."""

import re

from tests.e2e.main_test import run_main

TINY = ["--config=configs/demo.py", "--config.num_train_steps=1", "--config.log_every_steps=1",
        "--config.model.width_multiplier=0.0625", "--config.batch_size=64"]


def test_a_second_process_loads_the_step_from_the_cache(tmp_path):
  cache = tmp_path / "xla"
  runs = [run_main(*TINY, f"--config.compilation_cache_dir={cache}", tmp_path=tmp_path / run)
          for run in ("first", "second")]
  for result in runs:
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Compilation cache: {cache} (config.compilation_cache_dir)" in result.stderr
  first, second = (result.stderr for result in runs)
  assert re.search(r"Compiled the pretraining step in \d+\.\d s\.", first), first[-3000:]
  assert "Loaded the pretraining step" not in first
  assert re.search(r"Loaded the pretraining step from the compilation cache in \d+\.\d s\.",
                   second), second[-3000:]
  assert "Compiled the pretraining step" not in second
  assert list(cache.glob("jit_train_step-*"))  # The entry the second run read.
