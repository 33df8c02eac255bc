"""Entry point: python main.py --config=configs/food101.py --workdir=/tmp/simclr [--mode=...]

Any config field can be overridden, e.g. --config.batch_size=512; --mode=show_config prints
the resolved config with each field's meaning.
"""

from absl import app, flags, logging

from simclr_jax import cli

FLAGS = flags.FLAGS
cli.define_flags(FLAGS)
flags.adopt_module_key_flags(cli)  # --help lists them.


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.mode == cli.SHOW_CONFIG:
    from simclr_jax import config_text  # pylint: disable=g-import-not-at-top
    print(config_text.render(FLAGS.config), end="")
    return
  # Imported here so that --help and flag errors are instant.
  from simclr_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=cli.parse_flags)
