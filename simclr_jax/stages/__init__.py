"""The stages, one module per `--mode`, looked up in `STAGES` (main.py's help lists it).

Each stage is one importable function `(config, workdir) -> summary dict` that writes its
JSON summary to the workdir. Stages never import each other; they share the training
machinery (`simclr_jax.training`), the evaluation helpers and one way to load an encoder.
A stage's module is imported when it runs, so `--help` stays instant and a stage's
dependencies load only for it.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class Mode:
  """A `--mode`: what it does, for `--help`, and the stage functions it runs, in order, as
  'module:function' within this package."""
  help: str
  runs: tuple[str, ...]
  # Environment variables (name, value) set, unless already set, before JAX is imported.
  environment: tuple[tuple[str, str], ...] = ()


def set_environment(mode: str) -> None:
  """`mode`'s environment defaults; call before JAX is imported (cli.main does)."""
  for name, value in STAGES[mode].environment:
    os.environ.setdefault(name, value)


STAGES: dict[str, Mode] = {
    "pretrain": Mode("self-supervised pretraining (resumes)", ("pretrain:pretrain",)),
    "linear_eval": Mode("linear and kNN probes on the frozen encoder",
                        ("linear_eval:evaluate",)),
    "pretrain_and_eval": Mode("both", ("pretrain:pretrain", "linear_eval:evaluate")),
    "finetune": Mode("fine-tune the encoder with labels (config.finetune)",
                     ("finetune:finetune",)),
    "export": Mode("the encoder as safetensors (torchvision's names) and JSON in "
                   "workdir/export", ("export:export_encoder",)),
    "extract_features": Mode("a split's features and labels as .npy in workdir/features",
                             ("extract_features:extract_features",)),
    "compile_check": Mode("the pretraining step compiled for a TPU slice here (needs libtpu): "
                          "memory per chip, FLOPs, roofline; workdir/compile_check.json",
                          ("compile_check:compile_check",),
                          # JAX on the CPU (there is no TPU here), libtpu not asking a
                          # cloud metadata server which TPU this machine has, nor holding
                          # its one-process lock (it drives no hardware here).
                          environment=(("JAX_PLATFORMS", "cpu"), ("TPU_SKIP_MDS_QUERY", "1"),
                                       ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"))),
}


def run(mode: str, config, workdir: str) -> list[dict[str, Any]]:
  """Runs the stages of `mode` in order; returns their summaries."""
  summaries = []
  for target in STAGES[mode].runs:
    module, function = target.split(":")
    stage = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    summaries.append(stage(config, workdir))
  return summaries
