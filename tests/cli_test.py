"""main.py's command line, in-process: every bad flag, config file, `:ARG`, tuple field and
enumerated field ends in one `Error:` line before anything compiles; --help lists the
configs."""

import importlib
import inspect

import pytest
from absl import flags

from configs import default
from configs import methods as method_blocks
from simclr_jax import (
  backbones,
  cli,
  config_checks,
  methods,
  precision,
  runtime,
  stages,
  storage,
)
from simclr_jax.backbones import patch_conv, resnet
from simclr_jax.training import optim
from tests.support import paths


def parse(*args, workdir="--workdir=/tmp/unused"):
  """cli.parse_flags on `main.py ARGS [workdir]`, in fresh flags; returns the FlagValues."""
  argv = ["main.py", *args] + ([workdir] if workdir else [])
  flag_values = flags.FlagValues()
  cli.define_flags(flag_values, sys_argv=argv)
  cli.parse_flags(argv, flag_values)
  return flag_values


def error_of(*args, **kwargs) -> str:
  """The one-line `Error: ...` that parsing `args` exits with."""
  with pytest.raises(SystemExit) as exit_info:
    parse(*args, **kwargs)
  message = str(exit_info.value.code)
  assert message.startswith("Error: ") and "\n" not in message, message
  assert "Traceback" not in message, message
  return message


# ------------------------------------------------------------------------- config files


def test_a_missing_config_file_names_the_close_one_and_those_there_are():
  message = error_of("--config=configs/food101x.py")
  assert message.startswith("Error: config file configs/food101x.py not found (looked in ")
  assert "did you mean configs/food101.py?" in message
  assert all(name in message for name in cli.available_configs())


def test_a_relative_config_path_works_from_another_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert parse("--config=configs/demo.py:byol").config.method == "byol"
  # The current folder comes first: a configs/demo.py there is the one loaded.
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "demo.py").write_text(
      "from configs import default\n\n\ndef get_config():\n"
      "  config = default.get_config()\n  config.seed = 7\n  return config\n")
  assert parse("--config=configs/demo.py").config.seed == 7


def test_every_config_in_configs_loads_with_each_choice_of_its_argument():
  for name in cli.available_configs():
    module = importlib.import_module(name[:-3].replace("/", "."))
    parse(f"--config={name}")
    args = getattr(module, "ARGS", None)
    for part in args.parts if args else ():
      for choice in part.choices:
        config = parse(f"--config={name}:{choice}").config
        if part.name == "METHOD":
          assert config.method == choice


def test_every_config_in_configs_rejects_a_bad_argument_in_one_line():
  for name in cli.available_configs():
    module = importlib.import_module(name[:-3].replace("/", "."))
    message = error_of(f"--config={name}:simsiam,10pct")
    if hasattr(module, "ARGS"):
      assert message.startswith(f"Error: --config={name}:simsiam,10pct: 'simsiam' is not a "
                                f"choice"), message
      assert module.ARGS.usage() in message
    else:
      assert not inspect.signature(module.get_config).parameters, (
          f"{name} takes an argument: declare its choices as ARGS (configs/arguments.py), "
          f"for --help to list them")
      assert message == (f"Error: {name} takes no argument: use --config={name} "
                         f"(got :simsiam,10pct).")


def test_an_argument_part_given_twice_is_one_line():
  message = error_of("--config=configs/food101_finetune.py:byol,vicreg")
  assert "METHOD is given twice ('byol' and 'vicreg')" in message


def test_the_configs_method_names_are_the_registry_s():
  assert method_blocks.NAMES == tuple(methods.METHODS)


@pytest.mark.parametrize("source, expected", [
    ("X = 1 / 0\n",
     "config file {file} failed to load: ZeroDivisionError: division by zero ({file}, line 1)"),
    ("def get_config(:\n",
     "config file {file} failed to load: SyntaxError: invalid syntax (line 1)"),
    ("import ml_collections\n\n\ndef get_config():\n  return ml_collections.ConfigDict().nope\n",
     "--config={file}: AttributeError: 'nope' ({file}, line 5)"),
    ("def get_config():\n  return {'a': 1}\n",
     "{file}: get_config() returned dict, not an ml_collections.ConfigDict."),
    ("X = 1\n", "{file} has no get_config(), so it is not a config file (available: "),
])
def test_a_broken_config_file_is_one_line_naming_the_file(source, expected, tmp_path):
  file = tmp_path / "mine.py"
  file.write_text(source)
  assert error_of(f"--config={file}").startswith("Error: " + expected.format(file=file))


def test_flags_that_are_required_say_what_they_take():
  assert error_of(workdir=None).startswith("Error: --config is required: a config file, e.g.")
  assert error_of("--config=configs/demo.py", workdir=None).startswith(
      "Error: --workdir is required for --mode=pretrain")
  assert parse("--config=configs/demo.py", "--mode=show_config", workdir=None).workdir is None


def test_bad_flags_and_fields_are_one_line():
  assert "unknown config field 'batch_sizee'" in error_of(
      "--config=configs/demo.py", "--config.batch_sizee=3")
  assert "--mode=train" in error_of("--config=configs/demo.py", "--mode=train")


# ------------------------------------------------------------------------- tuple fields

DEFAULT_TUPLE_FIELDS = sorted(config_checks.tuple_fields(default.get_config()))


def test_every_tuple_field_of_the_defaults_has_a_shape():
  assert {"augment.crop_area_range", "augment.view1.color_jitter",
          "simclr.head_widths", "export.feature_splits"} <= set(DEFAULT_TUPLE_FIELDS)
  for name in DEFAULT_TUPLE_FIELDS:
    assert name.rsplit(".", 1)[-1] in config_checks.TUPLE_FIELDS, name


@pytest.mark.parametrize("name", DEFAULT_TUPLE_FIELDS)
def test_a_scalar_for_a_tuple_field_is_one_line_with_an_example(name):
  # 0.5 is read as (0.5,): too short for a range or a jitter, not an integer width, not a
  # string, not a (regex, factor) pair.
  shape = config_checks.TUPLE_FIELDS[name.rsplit(".", 1)[-1]]
  message = error_of("--config=configs/default.py", f"--config.{name}=0.5")
  assert message.startswith(f"Error: config.{name} takes {shape.what}, e.g. --config.{name}=")
  assert message.endswith(", got 0.5.")
  # The example given is accepted, and sets the field.
  quote = message.split(f"--config.{name}=")[1][0]
  example = message.split(f"--config.{name}={quote}")[1].split(quote)[0]
  config = parse("--config=configs/default.py", f"--config.{name}={example}").config
  assert tuple(config_checks.tuple_fields(config)[name]) == eval(example)  # pylint: disable=eval-used


def test_the_reported_case_crop_area_range():
  assert error_of("--config=configs/food101.py", "--config.augment.crop_area_range=0.2") == (
      'Error: config.augment.crop_area_range takes 2 numbers, e.g. '
      '--config.augment.crop_area_range="(0.08, 1.0)", got 0.2.')


# ------------------------------------------------------------------------- choices

# Every field whose value is one of a set (the registries' and the stages' own), the
# stage whose check holds it to that set, and the set.
ENUMERATED = [
    ("method", "pretrain", tuple(methods.METHODS)),
    ("model.name", "pretrain", tuple(backbones.BACKBONES)),
    ("model.depth", "pretrain", tuple(resnet.STAGE_SIZES)),
    ("compute_dtype", "pretrain", tuple(precision.COMPUTE_DTYPES)),
    ("compute_dtype", "linear_eval", tuple(precision.COMPUTE_DTYPES)),
    ("conv_algorithm", "pretrain", patch_conv.ALGORITHMS),
    ("optimizer.name", "pretrain", optim.OPTIMIZERS),
    ("optimizer.lr_scaling", "pretrain", optim.LR_SCALINGS),
    ("optimizer.schedule_unit", "pretrain", optim.SCHEDULE_UNITS),
    ("finetune.optimizer.name", "finetune", optim.OPTIMIZERS),
    ("finetune.optimizer.lr_scaling", "finetune", optim.LR_SCALINGS),
    ("finetune.optimizer.schedule_unit", "finetune", optim.SCHEDULE_UNITS),
    ("linear_eval.lr_scaling", "linear_eval", ("linear", "none")),
    ("linear_eval.lr_scaling", "pretrain_and_eval", ("linear", "none")),
]


def _set(config, field, value):
  *blocks, name = field.split(".")
  for block in blocks:
    config = config[block]
  config[name] = value


@pytest.mark.parametrize("field, mode, choices", ENUMERATED)
def test_a_bad_choice_is_one_line_listing_the_choices(field, mode, choices):
  config = importlib.import_module("configs.demo").get_config()
  runtime.check_config(config, mode)
  _set(config, field, 19 if field == "model.depth" else "adam")
  with pytest.raises(config_checks.ConfigError) as error:
    runtime.check_config(config, mode)
  message = str(error.value)
  assert "\n" not in message and message.startswith(field), message
  assert all(repr(choice) in message or str(choice) in message for choice in choices), message


def test_a_later_stage_s_bad_choice_stops_the_run_before_the_first_stage(monkeypatch, caplog,
                                                                         tmp_path):
  config = importlib.import_module("configs.demo").get_config()
  config.linear_eval.lr_scaling = "sqrt"
  monkeypatch.setattr(stages, "run", lambda *args: pytest.fail("a stage ran"))
  with pytest.raises(SystemExit) as exit_info:
    runtime.run(config, str(tmp_path), "pretrain_and_eval")
  assert exit_info.value.code == ("Error: linear_eval.lr_scaling must be 'linear' or 'none', "
                                  "got 'sqrt'.")
  # Printed once (by the exit), not logged as well.
  assert not [r for r in caplog.records if "lr_scaling" in r.getMessage()]


# ------------------------------------------------------------------------- show_config


def test_show_config_prints_a_commented_config_file_that_loads_back(tmp_path, capsys):
  shown = parse("--config=configs/demo.py:byol", "--config.batch_size=64",
                "--config.augment.crop_area_range=(0.2, 1.0)", "--mode=show_config",
                workdir=None)
  cli.main(["main.py"], shown)
  text = capsys.readouterr().out
  assert "config.batch_size = 64  # Global, across all devices and hosts." in text
  (tmp_path / "shown.py").write_text(text)
  again = parse(f"--config={tmp_path / 'shown.py'}").config
  assert again.to_dict() == shown.config.to_dict()
  assert (again.method, again.augment.crop_area_range) == ("byol", (0.2, 1.0))


def test_a_stray_argument_is_one_line():
  with pytest.raises(SystemExit, match="^Error: unexpected arguments pretrain: every argument "
                                       "is a flag"):
    cli.main(["main.py", "pretrain"], parse("--config=configs/demo.py"))


# ------------------------------------------------------------------------- --help


def test_help_lists_every_config_with_its_purpose_and_argument():
  text = cli.help_text()
  names = cli.available_configs()
  assert set(names) == {f"configs/{p.name}" for p in (paths.REPO / "configs").glob("*.py")
                        if "def get_config(" in p.read_text() and p.name != "default.py"}
  for name in names:
    module = importlib.import_module(name[:-3].replace("/", "."))
    first_line = module.__doc__.strip().splitlines()[0]
    assert " ".join(first_line.split()[:6]) in " ".join(text.split()), name
    if hasattr(module, "ARGS"):
      assert f"{name}[:ARG]" in text
      assert " ".join(module.ARGS.usage().split()) in " ".join(text.split())
  assert "configs/methods.py" not in text and "configs/augment_presets.py" not in text


def test_a_config_file_on_gcs_loads_like_a_local_one(fake_gcs, tmp_path):
  """A run's WORKDIR/config/<mode>.py on a gs:// workdir is what its messages say to rerun."""
  with fake_gcs.environ():
    file = f"{fake_gcs.bucket_url}/run/config/pretrain.py"
    storage.write_bytes(file, (paths.REPO / "configs" / "demo.py").read_bytes())
    assert parse(f"--config={file}:vicreg").config.method == "vicreg"
    assert error_of(f"--config={file}x").startswith(
        f"Error: {file}x (--config) does not exist.")
