"""config_text: a config rendered as a config file loads back equal, with default.py's
comments beside its fields."""

import importlib

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from simclr_jax import config_text


def _config(spec: str) -> ml_collections.ConfigDict:
  module, _, arg = spec.partition(":")
  return importlib.import_module(f"configs.{module}").get_config(*([arg] if arg else []))


def _load(path, *overrides) -> ml_collections.ConfigDict:
  """The file through ml_collections' --config flag, as main.py reads it."""
  argv = ["main.py", f"--config={path}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


@pytest.mark.parametrize("spec", ["food101", "food101_byol", "demo:vicreg",
                                  "food101_finetune:1pct"])
def test_rendered_config_loads_back_equal(spec, tmp_path):
  config = _config(spec)
  path = tmp_path / "config.py"
  path.write_text(config_text.render(config, header="a header\nof two lines"))
  assert _load(path).to_dict() == config.to_dict()


def test_unset_placeholders_stay_overridable(tmp_path):
  """data_dir is an unset str placeholder: the rendered file still takes --config.data_dir."""
  path = tmp_path / "config.py"
  path.write_text(config_text.render(_config("food101")))
  loaded = _load(path, "--config.data_dir=/data/food", "--config.export.checkpoint_step=7")
  assert (loaded.data_dir, loaded.export.checkpoint_step) == ("/data/food", 7)


def test_floats_tuples_and_fields_unknown_to_default_are_exact(tmp_path):
  config = _config("food101")
  config.augment.crop_ratio_range = (3 / 4, 4 / 3)
  config.optimizer.learning_rate_multipliers = (("^predictor/", 10.0),)
  config.optimizer.exclude_patterns = ("^probe/",)
  config.extra = ml_collections.ConfigDict({"inf": float("inf"), "names": ["a", "b"]})
  path = tmp_path / "config.py"
  path.write_text(config_text.render(config))
  assert _load(path).to_dict() == config.to_dict()


def test_fields_carry_default_comments():
  lines = config_text.render(_config("food101")).splitlines()

  def line_of(code):
    return next(i for i, line in enumerate(lines) if line.strip().startswith(code))

  assert lines[line_of("config.data_dir =")].endswith("# Local path or gs://.")
  assert lines[line_of("config.batch_size =")].endswith(
      "# Global, across all devices and hosts.")
  # Comment lines above a field, and a method block's field from configs/methods.py.
  assert lines[line_of("config.model.zero_init_residual =") - 1].strip() == (
      "# code's); False: torchvision's initialisation, as the seed.")
  assert "Projection head widths" in lines[line_of("config.simclr.head_widths =") - 1]
  # A field with no comment in default.py gets none.
  assert lines[line_of("config.seed =")].strip() == "config.seed = 0"


def test_a_value_without_a_literal_is_refused():
  config = ml_collections.ConfigDict({"when": object()})
  with pytest.raises(TypeError, match="config.when"):
    config_text.render(config)


def test_write_puts_the_file_under_workdir_config(tmp_path):
  config = _config("demo:byol")
  path = config_text.write(config, str(tmp_path / "work"), "pretrain")
  assert path == str(tmp_path / "work" / "config" / "pretrain.py")
  text = (tmp_path / "work" / "config" / "pretrain.py").read_text()
  assert f"--config={path}" in text.splitlines()[0]
  assert _load(path).to_dict() == config.to_dict()
