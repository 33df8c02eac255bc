"""What a run shows its user: progress (a bar on a terminal, plain lines otherwise, nothing on
other processes), and what is kept out of the log (library noise; the parameter table goes
to WORKDIR/parameters.txt)."""

import io
import json
import logging as std_logging
import re
import sys

import jax
import pytest
import tensorflow_datasets as tfds
from absl import logging

from simclr_jax import runtime
from simclr_jax.data import _drop_native_info
from simclr_jax.stages import pretrain
from simclr_jax.training import progress
from tests.conftest import MOCK_EXAMPLES
from tests.support.helpers import tiny_food101_config


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


class FakeTerminal(io.StringIO):
  def isatty(self):
    return True


def _messages(caplog):
  return [record.getMessage() for record in caplog.records]


def test_plain_line_has_step_total_percent_rate_elapsed_eta_and_loss():
  clock = FakeClock()
  shown = progress.Progress(600, label="Pretraining", bar=False, clock=clock)
  clock.now = 30.0  # Compilation: before the first update, so not in the rate.
  shown.update(1)
  clock.now = 30.0 + 119 / 5  # 5 steps/s from step 1 on.
  shown.update(120)
  # ETA: 480 steps left at 5 steps/s = 96 s; elapsed counts from the start (53.8 s).
  assert shown.line({"loss": 7.4812}) == (
      "Pretraining: step 120/600 (20%), 5 steps/s, elapsed 54s, ETA 1m36s, loss=7.481")


def test_rate_and_eta_start_at_the_second_update_and_from_a_resumed_step():
  clock = FakeClock()
  shown = progress.Progress(1000, label="Fine-tuning", initial=400, bar=False, clock=clock)
  assert shown.line() == "Fine-tuning: step 400/1000 (40%), elapsed 0s"
  clock.now = 10.0
  shown.update(401)
  assert shown.rate() is None and "ETA" not in shown.line()
  clock.now = 10.0 + 99 / 0.5  # 0.5 steps/s since step 401: 500 steps left take 1000 s.
  shown.update(500)
  assert shown.rate() == pytest.approx(0.5)
  assert shown.line().endswith("(50%), 0.5 steps/s, elapsed 3m28s, ETA 16m40s")


def test_images_are_counted_after_the_total():
  clock = FakeClock()
  shown = progress.Progress(1347, label="Encoding 'train'", unit="image", bar=False,
                            clock=clock)
  shown.update(256)
  clock.now = 0.5
  shown.update(896)  # 640 images in 0.5 s.
  assert shown.line() == ("Encoding 'train': 896/1347 images (66%), 1,280 images/s, "
                          "elapsed 0s, ETA 0s")


@pytest.mark.parametrize("seconds, text", [(8.4, "8s"), (76, "1m16s"), (3599, "59m59s"),
                                           (7500, "2h05m")])
def test_durations(seconds, text):
  assert progress.duration(seconds) == text


def test_report_logs_the_plain_line(caplog):
  shown = progress.Progress(10, label="Pretraining", bar=False)
  shown.update(5)
  with caplog.at_level(std_logging.INFO, logger="absl"):
    shown.report({"loss": 2.5})
  assert _messages(caplog) == ["Pretraining: step 5/10 (50%), elapsed 0s, loss=2.5"]


def test_a_terminal_gets_a_live_bar_and_stderr_writes_go_above_it(monkeypatch, caplog):
  terminal = FakeTerminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  with (caplog.at_level(std_logging.INFO, logger="absl"),
        progress.Progress(10, label="Pretraining", initial=2) as shown):
    assert shown.bar is not None
    for step in range(3, 8):
      shown.update(step)
    shown.report({"loss": 1.25})
    print("a warning", file=sys.stderr)
    assert sys.stderr is not terminal  # Writes pass through tqdm.write.
  assert sys.stderr is terminal
  assert not _messages(caplog)  # No plain lines beside the bar.
  text = terminal.getvalue()
  assert re.search(r"Pretraining:\s+70%\|.*\| 7/10 \[", text), text
  assert "a warning\n" in text and "step/s" in text


def test_other_processes_show_nothing(monkeypatch, caplog):
  terminal = FakeTerminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  clock = FakeClock()
  with caplog.at_level(std_logging.INFO, logger="absl"):
    for bar in (True, False):
      with progress.Progress(10, label="Pretraining", bar=bar, clock=clock) as shown:
        shown.update(1)
        clock.now += 1
        shown.update(3)
        shown.report({"loss": 1.0})
        assert shown.rate() == pytest.approx(2.0)  # Still measured, for TensorBoard.
  assert terminal.getvalue() == "" and not _messages(caplog)


def _record(pathname, message, level=std_logging.INFO, name="absl"):
  return std_logging.LogRecord(name, level, pathname, 1, message, None, None)


ORBAX = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py"
CLU_LOGGING = "/venv/lib/python3.11/site-packages/clu/metric_writers/logging_writer.py"


@pytest.mark.parametrize("record, shown", [
    (_record(ORBAX, "Given directory is read only=/w/checkpoints", std_logging.WARNING), False),
    (_record(ORBAX, "Saving checkpoint at step 5"), False),
    (_record(ORBAX, "Checkpoint 7 is damaged", std_logging.WARNING), True),
    (_record("/site-packages/jax/_src/xla_bridge.py", "Unable to initialize backend 'tpu'",
             name="jax._src.xla_bridge"), False),
    (_record("/site-packages/jax/_src/xla_bridge.py", "a real problem", std_logging.WARNING,
             name="jax._src.xla_bridge"), True),
    (_record(CLU_LOGGING, "[Hyperparameters] {'batch_size': 256}"), False),
    (_record(CLU_LOGGING, "[0] Got images: {'augmented_view_pairs': (1, 144, 34, 3)}."), False),
    (_record(CLU_LOGGING, "[5] loss=7.98"), True),
    (_record("/repo/simclr_jax/stages/pretrain.py", "Pretraining simclr on ..."), True),
])
def test_library_noise_is_filtered_and_verbosity_1_brings_it_back(record, shown):
  quiet = runtime._QuietLibraries()
  absl_logger = logging.get_absl_logger()
  before = absl_logger.level  # Usually NOTSET: set_verbosity(get_verbosity()) would pin WARNING.
  try:
    logging.set_verbosity(logging.INFO)  # main.py's.
    assert quiet.filter(record) is shown
    logging.set_verbosity(logging.DEBUG)
    assert quiet.filter(record)
  finally:
    absl_logger.setLevel(before)


def test_tensorflow_start_up_info_is_dropped_and_its_warnings_kept():
  caught = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
            "STDERR\n"
            "I0000 00:00:1796311683.879839   17166 port.cc:153] oneDNN custom operations are on.\n"
            "I0000 00:00:1796311683.993705   17166 cpu_feature_guard.cc:227] This TensorFlow\n"
            "To enable the following instructions: AVX2, rebuild TensorFlow.\n"
            "W0000 00:00:1796311684.000001   17166 loader.cc:12] Could not load libcudart\n"
            "E0000 00:00:1796311684.000002   17166 x.cc:3] a real error\n")
  assert _drop_native_info(caught) == (
      "W0000 00:00:1796311684.000001   17166 loader.cc:12] Could not load libcudart\n"
      "E0000 00:00:1796311684.000002   17166 x.cc:3] a real error\n")


def test_parameter_table_is_in_the_workdir(pretrained_workdir):
  summary = json.loads((pretrained_workdir / "pretrain_summary.json").read_text())
  table = (pretrained_workdir / pretrain.PARAMETERS_FILE).read_text()
  total = sum(count for name, count in summary.items() if name.startswith("params_"))
  assert f"Total: {total:,} -- " in table
  assert re.search(r"^\| encoder/\S+ +\| \(", table, re.MULTILINE)


def test_pretraining_logs_one_parameter_line_and_its_progress(tmp_path, caplog):
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES), caplog.at_level(std_logging.INFO, logger="absl"):
    pretrain.pretrain(tiny_food101_config(), str(tmp_path))
  messages = _messages(caplog)
  assert not [m for m in messages if "| encoder/" in m or "Total:" in m]  # No table.
  counts = [m for m in messages if " parameters (encoder " in m]
  assert len(counts) == 1 and str(tmp_path / "parameters.txt") in counts[0], messages
  assert "Pretraining: step 1/1 (100%), elapsed " in "\n".join(messages)
  assert (tmp_path / "parameters.txt").read_text().startswith("+---")
