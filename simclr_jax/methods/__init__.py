"""The method registry: `config.method` -> its `Method` record (methods/base.py).

A method is one file here (its model, its loss over the views, its target network, its
checks), its losses in `simclr_jax.losses` and its config block (`configs/methods.py`).
This is the only place that looks at `config.method`.
"""

from __future__ import annotations

from simclr_jax import config_checks
from simclr_jax.methods import byol, mocov3, simclr, vicreg
from simclr_jax.methods.base import Method

METHODS: dict[str, Method] = {
    "simclr": simclr.METHOD,
    "byol": byol.METHOD,
    "mocov3": mocov3.METHOD,
    "vicreg": vicreg.METHOD,
}


def get(config) -> Method:
  """The method `config.method` names; ConfigError for an unknown name."""
  config_checks.require(config.method in METHODS,
                        f"method must be one of {sorted(METHODS)}, got {config.method!r}.")
  return METHODS[config.method]


def check_config(config) -> None:
  """The method's own checks (its config block)."""
  get(config).check_config(config)
