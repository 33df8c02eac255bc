"""Entry point: python main.py --config=configs/food101.py --workdir=/tmp/simclr [--mode=...]

Any config field can be overridden, e.g. --config.batch_size=512.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from simclr_jax.stages import STAGES

FLAGS = flags.FLAGS
MODES = {name: mode.help for name, mode in STAGES.items()}
config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard and summaries.")
flags.DEFINE_enum("mode", "pretrain", list(MODES), "Which stage to run: " + "; ".join(
    f"{name}: {what}" for name, what in MODES.items()) + ".")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
  """absl's parsing, with a bad flag or an unknown config field reported as one line (e.g.
  `Error: unknown config field 'batch_sizee' Did you mean "batch_size" ...`)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    raise SystemExit(f"Error: {' '.join(str(e).split())}") from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these from inside the parser for --config.<field> overrides;
    # an unknown field's message is "'name'\nDid you mean ...?".
    message = e
    while isinstance(message, BaseException) and message.args:  # KeyError inside AttributeError.
      message = message.args[0]
    text = " ".join(str(message).split())
    overrides = " ".join(arg for arg in argv[1:] if arg.startswith("--config."))
    kind = "unknown config field" if isinstance(e, (AttributeError, KeyError)) else "bad value"
    raise SystemExit(f"Error: {kind} {text} (in {overrides or 'the flags'}).") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Imported here so that --help and flag errors are instant.
  from simclr_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=parse_flags)
