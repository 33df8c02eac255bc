"""Entry point: python main.py --config=configs/food101.py --workdir=/tmp/simclr [--mode=...]

Any config field can be overridden, e.g. --config.batch_size=512.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard and summaries.")
flags.DEFINE_enum("mode", "pretrain", ["pretrain", "linear_eval", "pretrain_and_eval"],
                  "Which stage to run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Imported here so that --help and flag errors are instant.
  from simclr_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
