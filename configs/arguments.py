"""The `:ARG` of a config file (`--config=configs/food101_finetune.py:byol,1pct`).

An argument is comma-separated words, each a choice of one of the config's parts (a
method, a protocol, ...), in any order and each part at most once; a part left out takes
its default. A config that takes an argument declares its parts as the module constant
`ARGS` (an `Args`): its `get_config(arg)` reads the argument with `ARGS.parse(arg)`, and
`python main.py --help` lists them (simclr_jax/cli.py). Pure Python: no ml_collections.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Part:
  """One part of an argument: its name (e.g. 'METHOD'), its choices, the choice taken
  when it is left out (None: an option, off unless named) and what an option does."""
  name: str
  choices: tuple[str, ...]
  default: str | None = None
  help: str = ""

  def describe(self) -> str:
    """E.g. 'METHOD: simclr (default), byol, mocov3, vicreg'."""
    choices = ", ".join(f"{c} (default)" if c == self.default else c for c in self.choices)
    return f"{self.name}: {choices}" + (f" ({self.help})" if self.help else "")


class Args:
  """The parts of a config's argument."""

  def __init__(self, *parts: Part):
    self.parts = parts

  def usage(self) -> str:
    """E.g. 'METHOD,PROTOCOL, each optional, in any order; METHOD: simclr (default), ...;
    PROTOCOL: 1pct, 10pct (default), 100pct'."""
    names = ",".join(part.name for part in self.parts)
    optional = "optional" if len(self.parts) == 1 else "each optional, in any order"
    return f"{names}, {optional}; " + "; ".join(part.describe() for part in self.parts)

  def parse(self, arg: str | None) -> tuple[str | None, ...]:
    """The choice of each part (in the order of `parts`) that `arg` names, or the part's
    default; ValueError (one line, saying the choices) for a word that is no part's choice,
    or a part named twice."""
    chosen: dict[str, str] = {}
    for word in (arg or "").split(","):
      word = word.strip()
      if not word:
        continue
      part = next((p for p in self.parts if word in p.choices), None)
      if part is None:
        raise ValueError(f"{word!r} is not a choice of the config's argument "
                         f"(ARG: {self.usage()}).")
      if part.name in chosen:
        raise ValueError(f"{part.name} is given twice ({chosen[part.name]!r} and {word!r}); "
                         f"ARG: {self.usage()}.")
      chosen[part.name] = word
    return tuple(chosen.get(part.name, part.default) for part in self.parts)
