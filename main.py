"""Entry point: python main.py --config=configs/food101.py --workdir=/tmp/simclr [--mode=...]

Any config field can be overridden, e.g. --config.batch_size=512; --mode=show_config prints
the resolved config with each field's meaning.
"""

from absl import app, flags, logging

from simclr_jax import cli

cli.define_flags(flags.FLAGS)
flags.adopt_module_key_flags(cli)  # --help lists them.

if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(cli.main, flags_parser=cli.parse_flags)
