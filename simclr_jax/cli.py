"""main.py's command line: its flags, the config file, `--help`'s list of configs, and
`main`, which runs the --mode (or prints the config, for --mode=show_config).

`--config=FILE[:ARG]` is loaded while the flags are parsed, from the current folder or else
main.py's (so `configs/food101.py` works from anywhere), and anything wrong with it (no such
file, a bad `:ARG`, an exception inside the file, a tuple field given a scalar) ends the
process with one `Error: ...` line. Until `main` runs, nothing imports JAX or TensorFlow
(but for a gs:// config file), so those errors come in a fraction of a second; the stages'
own checks run later, before anything compiles (simclr_jax/runtime.py).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pathlib
import sys
import textwrap
import traceback
import types
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from simclr_jax import config_checks, stages

FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parent.parent  # main.py's folder.
CONFIGS = ROOT / "configs"
SHOW_CONFIG = "show_config"
MODES = {**{name: mode.help for name, mode in stages.STAGES.items()},
         SHOW_CONFIG: "print the resolved config (each field with its comment) and exit; "
                      "needs no --workdir"}
HELP_FLAGS = ("--help", "-help", "--helpshort", "-helpshort", "-?", "--helpfull", "-helpfull")


class ConfigFileError(Exception):
  """A `--config` that cannot be loaded; the message is one line. Not a ValueError, which
  absl would wrap in its own text."""


def define_flags(flag_values: flags.FlagValues = FLAGS,
                 sys_argv: Sequence[str] | None = None) -> None:
  """--config, --workdir and --mode in `flag_values`. `sys_argv`: the arguments the
  `--config.<field>` overrides are read from (default: sys.argv, at parse time)."""
  config_flags.DEFINE_config_file(
      "config", None, "A config file, FILE[:ARG]; those in configs/ are listed above. Any "
      "field can be overridden, e.g. --config.batch_size=512; --mode=show_config prints "
      "them all.", flag_values=flag_values, lock_config=True, sys_argv=sys_argv)
  flag_values["config"].parser = _ConfigFileParser()
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard and summaries "
                      "(local or gs://).", flag_values=flag_values)
  flags.DEFINE_enum("mode", "pretrain", list(MODES), "Which stage to run: " + "; ".join(
      f"{name}: {what}" for name, what in MODES.items()) + ".", flag_values=flag_values)


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> list[str]:
  """absl's parsing of `argv` (program name first) into `flag_values` (see define_flags);
  returns the arguments left over. Any bad flag, config file or override ends the process
  with one line: SystemExit('Error: ...')."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    main_module = sys.modules["__main__"]
    main_module.__doc__ = (main_module.__doc__ or "") + help_text()
  try:
    rest = flag_values(argv)
  except ConfigFileError as e:
    raise SystemExit(f"Error: {e}") from None
  except flags.Error as e:
    raise SystemExit(f"Error: {_one_line(e)}") from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these from inside the parser for --config.<field> overrides;
    # an unknown field's message is "'name'\nDid you mean ...?".
    overrides = " ".join(arg for arg in argv[1:] if arg.startswith("--config."))
    kind = "unknown config field" if isinstance(e, (AttributeError, KeyError)) else "bad value"
    raise SystemExit(f"Error: {kind} {_one_line(e)} "
                     f"(in {overrides or 'the flags'}).") from None
  _require_flags(flag_values)
  try:
    config_checks.check_tuple_fields(flag_values.config, _typed_overrides(argv))
  except config_checks.ConfigError as e:
    raise SystemExit(f"Error: {e}") from None
  return rest


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  """Runs the parsed flags' --mode: prints the config (show_config) or runs its stages."""
  if len(argv) > 1:
    raise SystemExit(f"Error: unexpected arguments {' '.join(argv[1:])}: every argument is a "
                     f"flag (python main.py --help).")
  if flag_values.mode == SHOW_CONFIG:
    from simclr_jax import config_text  # pylint: disable=g-import-not-at-top
    print(config_text.render(flag_values.config), end="")
    return
  stages.set_environment(flag_values.mode)
  # Imported here so that --help and flag errors need no JAX or TensorFlow.
  from simclr_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.run(flag_values.config, flag_values.workdir, flag_values.mode)


def _require_flags(flag_values: flags.FlagValues) -> None:
  if flag_values.config is None:
    raise SystemExit("Error: --config is required: a config file, e.g. "
                     "--config=configs/demo.py (python main.py --help lists them).")
  if flag_values.workdir is None and flag_values.mode != SHOW_CONFIG:
    raise SystemExit(f"Error: --workdir is required for --mode={flag_values.mode}: the "
                     "folder for its checkpoints and summaries (local or gs://), e.g. "
                     "--workdir=/tmp/simclr.")


def _typed_overrides(argv: Sequence[str]) -> dict[str, str]:
  """'augment.crop_area_range' -> '0.2' for each `--config.<field>=<text>` in `argv`."""
  typed = {}
  for arg in argv[1:]:
    if arg.startswith("--config.") and "=" in arg:
      field, text = arg[len("--config."):].split("=", 1)
      typed[field] = text if field not in typed else f"{typed[field]} {text}"
  return typed


# ------------------------------------------------------------------------- config files


class _ConfigFileParser(flags.ArgumentParser):
  """In place of ml_collections' --config parser (which defers a missing file's error to
  the config's first use, as two chained tracebacks): `load_config`, then lock."""

  def parse(self, argument):
    config = load_config(argument)
    config.lock()
    return config

  def flag_type(self):
    return "config object"


def load_config(argument: str) -> ml_collections.ConfigDict:
  """The config of `--config=FILE[:ARG]`: FILE's `get_config()`, or `get_config(ARG)`.

  A relative FILE is looked for in the current folder, then in main.py's; a gs:// one
  (e.g. a run's WORKDIR/config/pretrain.py) is read through simclr_jax.storage.
  ConfigFileError (one line) for a file not found (naming the configs there are), a file
  that is no config, an ARG the config does not take (its own message), or any exception
  inside the file.
  """
  scheme, remote, rest = argument.rpartition("://")
  file, has_arg, arg = rest.partition(":")
  file = f"{scheme}{remote}{file}"
  module = _load_module(file, _read_remote(file) if remote else find_config_file(file))
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigFileError(f"{file} has no get_config(), so it is not a config file "
                          f"(available: {', '.join(available_configs())}).")
  args = (arg,) if has_arg else ()
  try:
    inspect.signature(get_config).bind(*args)
  except TypeError:
    raise ConfigFileError(f"{file} takes no argument: use --config={file} (got :{arg}).") from None
  try:
    config = get_config(*args)
  except ValueError as e:  # The config's own message, e.g. a choice its ARG lacks.
    raise ConfigFileError(f"--config={argument}: {_one_line(e)}") from None
  except Exception as e:  # Anything a user's file can raise: one line, as above.
    raise ConfigFileError(f"--config={argument}: {_described(e, module.__file__)}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigFileError(f"{file}: get_config() returned {type(config).__name__}, not an "
                          f"ml_collections.ConfigDict.")
  return config


def _read_remote(file: str) -> tuple[str, str]:
  """(`file`, its text) for a `scheme://` path; ConfigFileError if it cannot be read."""
  from simclr_jax import storage  # pylint: disable=g-import-not-at-top  (JAX: only for these)
  try:
    return file, storage.require_existing(file, "--config").read_text()
  except storage.StorageError as e:
    raise ConfigFileError(str(e)) from None
  except Exception as e:  # The backend's own errors (permissions, network): one line.
    raise ConfigFileError(f"Cannot read {file} (--config): {_described(e, file)}") from e


def find_config_file(file: str) -> tuple[str, str]:
  """(the path, its text) of the local config file `file`: as given, or else relative to
  main.py's folder; ConfigFileError if neither is a file."""
  given = pathlib.Path(file)
  candidates = [given] if given.is_absolute() else [given, ROOT / given]
  for candidate in candidates:
    if candidate.is_file():
      return str(candidate), candidate.read_text(encoding="utf-8")
  looked = [str(pathlib.Path.cwd())] + ([str(ROOT)] if pathlib.Path.cwd() != ROOT else [])
  where = "" if given.is_absolute() else f"looked in {' and '.join(looked)}; "
  available = available_configs()
  close = difflib.get_close_matches(file, available, n=1)
  guess = f"did you mean {close[0]}? " if close else ""
  raise ConfigFileError(f"config file {file} not found ({where}{guess}available: "
                        f"{', '.join(available)}).")


def available_configs() -> list[str]:
  """The config files in configs/ (those with a top-level get_config) but default.py (the
  base they build on), as 'configs/<name>.py'."""
  return [f"configs/{path.name}" for path in sorted(CONFIGS.glob("*.py"))
          if path.name != "default.py" and _defines_get_config(path)]


def _defines_get_config(path: pathlib.Path) -> bool:
  return any(line.startswith("def get_config(")
             for line in path.read_text(encoding="utf-8").splitlines())


def _load_module(file: str, found: tuple[str, str]):
  """The module of config file `file`, at `found` = (its path, its text), executed;
  ConfigFileError for any exception."""
  path, text = found
  name = f"_simclr_config_{abs(hash(path))}"
  module = types.ModuleType(name)
  module.__file__ = path
  sys.modules[name] = module  # Dataclasses and pickling look their module up there.
  try:
    exec(compile(text, path, "exec"), module.__dict__)  # noqa: S102  What --config asks.
  except Exception as e:  # Anything a user's file can raise: one line.
    del sys.modules[name]
    raise ConfigFileError(f"config file {file} failed to load: {_described(e, path)}") from e
  return module


def _described(error: BaseException, path: str) -> str:
  """'ZeroDivisionError: division by zero (configs/x.py, line 12)': the error, with the
  last line of the file `path` it passed through."""
  text = f"{type(error).__name__}: {_one_line(error)}"
  if isinstance(error, SyntaxError):
    return f"{text} (line {error.lineno})" if error.lineno else text
  lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
           if frame.filename == path]
  return f"{text} ({path}, line {lines[-1]})" if lines else text


def _one_line(message) -> str:
  """An error's message on one line: a SyntaxError's without its location, an
  AttributeError's from ml_collections without the KeyError inside it."""
  while isinstance(message, (AttributeError, KeyError)) and message.args:
    message = message.args[0]
  text = message.msg if isinstance(message, SyntaxError) else str(message)
  return " ".join(text.split())


# ------------------------------------------------------------------------- --help


def help_text() -> str:
  """What `--help` adds to main.py's docstring: each config in configs/ with the first line
  of its docstring and its `:ARG` choices (the module's `ARGS`, configs/arguments.py).
  Imports the configs (ml_collections only), not JAX or TensorFlow."""
  lines = ["", *textwrap.wrap(
      "Config files: --config=FILE, or FILE:ARG for those that take an argument (a relative "
      "FILE is looked for in the current folder, then beside main.py):", 94)]
  for name in available_configs():
    try:
      module = importlib.import_module(name[:-len(".py")].replace("/", "."))
    except Exception as e:  # noqa: BLE001  One broken file does not hide the others.
      lines.append(f"  {name}: cannot be imported ({_described(e, str(ROOT / name))})")
      continue
    args = getattr(module, "ARGS", None)
    lines.append(f"  {name}" + ("[:ARG]" if args is not None else ""))
    summary = (inspect.getdoc(module) or "").split("\n\n", 1)[0]
    lines += textwrap.wrap(" ".join(summary.split()), 92, initial_indent=" " * 6,
                           subsequent_indent=" " * 6)
    if args is not None:
      lines += textwrap.wrap(f"ARG: {args.usage()}", 92, initial_indent=" " * 6,
                             subsequent_indent=" " * 8)
  lines += ["", ("Every field, with its meaning: configs/default.py (the defaults the files "
                 "above build on), or"), "python main.py --config=FILE --mode=show_config.", ""]
  return "\n".join(lines)
