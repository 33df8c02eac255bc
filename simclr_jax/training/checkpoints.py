"""Orbax checkpoints: what every stage saves and restores, in `<workdir>/checkpoints`.

A checkpoint is one Orbax step folder with named items, each restorable alone:

  model:  {'params', 'batch_stats'}        what evaluation and every later stage restore
  train:  {'step', 'opt_state', 'rng'}     what resuming pretraining needs beside the model
  config: the run's config as JSON         compared with the config that restores it

Restoring walks back from the newest step: a damaged checkpoint (truncated or missing
files, an unfinished save) is named in a warning and the next older one is tried; only
when none is readable is it an error. A run that resumes moves the damaged ones aside (to
`checkpoints_damaged/`, kept), so that it can save those steps again. A checkpoint made
with another model is an error naming the differing config fields, never a fallback; a
later stage takes those fields from the pretraining checkpoint instead (`adopt_fields`).
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping, Sequence

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from simclr_jax import storage

CONFIG_ITEM = "config"
# Orbax writes a step to a folder with this in its name and renames it when committed.
UNFINISHED_MARKER = ".orbax-checkpoint-tmp"


class CheckpointError(RuntimeError):
  """Checkpoints exist but none can be restored."""


class CheckpointMismatchError(CheckpointError):
  """A checkpoint was made with a config whose model (or optimiser) differs."""


class NoCheckpointError(FileNotFoundError):
  """A stage needs a pretraining checkpoint and there is none."""


def checkpoint_dir(workdir) -> epath.Path:
  """`<workdir>/checkpoints`, the workdir kept as given (gs:// stays gs://)."""
  return storage.path(workdir) / "checkpoints"


def create_manager(directory, max_to_keep: int = 3,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """An Orbax manager over `directory` (local or gs://). `read_only` for stages that
  restore another stage's checkpoints: they never create, clean up or delete there."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else max_to_keep, create=not read_only,
      read_only=read_only, save_interval_steps=0 if read_only else 1)
  return ocp.CheckpointManager(storage.path(directory), options=options)


def config_json(config) -> dict[str, Any]:
  """The config as plain JSON (tuples become lists, unset placeholders None)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def save(manager: ocp.CheckpointManager, step: int, items: Mapping[str, Any], config) -> None:
  """Starts an asynchronous save of `items` (name -> pytree) and the config at `step`;
  `manager.wait_until_finished()` before exiting. Every process calls it."""
  args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
  args[CONFIG_ITEM] = ocp.args.JsonSave(config_json(config))
  manager.save(step, args=ocp.args.Composite(**args), force=True)


def restore_pretrained(workdir, targets, config=None, step: int | None = None,
                       check_fields: Sequence[str] = (),
                       partial: bool = False) -> tuple[int, dict[str, Any]]:
  """The one way to a pretraining checkpoint: `restore` over `workdir`'s checkpoints, read
  only (a stage never writes there), its newest readable step or `step`.

  Returns and raises as `restore`, and NoCheckpointError when there is no checkpoint (at
  `step`), with the command that makes one.
  """
  directory = checkpoint_dir(workdir)
  restored, steps = None, []
  if directory.exists():
    with create_manager(directory, read_only=True) as manager:
      steps = sorted(manager.all_steps())
      if step is None or step in steps:
        restored = restore(manager, targets, config, step, check_fields=check_fields,
                           partial=partial)
  if restored is None:
    raise _no_checkpoint(workdir, step, steps)
  return restored


def read_config(workdir, step: int | None = None) -> tuple[int, dict[str, Any]]:
  """(step, its saved config as a dict) of `workdir`'s pretraining checkpoint at `step`,
  or of the newest step whose config item reads; nothing else is read.

  Raises:
    NoCheckpointError: there is no checkpoint (at `step`).
    CheckpointError: no step's config item is readable.
  """
  directory = checkpoint_dir(workdir)
  steps = []
  if directory.exists():
    with create_manager(directory, read_only=True) as manager:
      steps = sorted(manager.all_steps(), reverse=True)
      failures = []
      for candidate in ([step] if step in steps else [] if step is not None else steps):
        try:
          return candidate, manager.restore(candidate, args=ocp.args.Composite(
              **{CONFIG_ITEM: ocp.args.JsonRestore()}))[CONFIG_ITEM]
        except Exception as e:  # noqa: BLE001  Orbax raises many types.
          failures.append(f"step {candidate}: {_one_line(e)}")
      if failures:
        raise CheckpointError(f"No readable checkpoint config in {directory} "
                              f"({'; '.join(failures)}).")
  raise _no_checkpoint(workdir, step, sorted(steps))


def _no_checkpoint(workdir, step: int | None, steps: Sequence[int]) -> NoCheckpointError:
  return NoCheckpointError(
      f"No pretraining checkpoint{'' if step is None else f' at step {step}'} in "
      f"{checkpoint_dir(workdir)} ({f'it has steps {list(steps)}' if steps else 'none'}). "
      f"Run `python main.py "
      f"--config=... --workdir={workdir}` (pretraining) first, or pick another checkpoint "
      f"step (the stage's checkpoint_step field; load_encoder's step).")


def restore(manager: ocp.CheckpointManager, targets, config,
            step: int | None = None,
            check_fields: Sequence[str] = (),
            move_damaged: bool = False,
            partial: bool = False) -> tuple[int, dict[str, Any]] | None:
  """Restores the items named in `targets` into their structure, dtypes and shardings.

  Args:
    manager: from `create_manager`.
    targets: item name -> a pytree like the one saved (values or ShapeDtypeStructs); or
      a function of the step's saved config (a dict) that returns them, for a target that
      the checkpoint's own config shapes (`load_encoder`).
    config: the config of the run that restores; its `check_fields` must equal the
      checkpoint's (None with no `check_fields`).
    step: that step only (damage is then an error); None: the newest readable step.
    check_fields: prefixes of dotted config names that must match.
    move_damaged: move the damaged steps newer than the one restored to `damaged_dir`
      (for a run that will save those steps again).
    partial: the targets name only part of each saved item (e.g. the encoder alone);
      the rest is not read.

  Returns:
    (step, {name: restored pytree, and CONFIG_ITEM: the step's saved config (a dict)}), or
    None when there is no checkpoint at all.

  Raises:
    CheckpointMismatchError: the checkpoint's config differs in `check_fields`.
    CheckpointError: checkpoints exist but none of those tried is readable.
  """
  _warn_about_unfinished_saves(manager)
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    return None
  failures = []
  for candidate in steps:
    path = epath.Path(manager.directory) / str(candidate)
    try:
      saved_config = manager.restore(
          candidate, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))
      if check_fields:
        _check_same_fields(saved_config[CONFIG_ITEM], config_json(config), check_fields,
                           path)
      step_targets = targets(saved_config[CONFIG_ITEM]) if callable(targets) else targets
      abstract = {name: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
                  for name, tree in step_targets.items()}
      restored = manager.restore(candidate, args=ocp.args.Composite(
          **{name: _restore_args(tree, partial) for name, tree in abstract.items()}))
      if failures and move_damaged:
        _move_aside(manager, steps[:steps.index(candidate)])
      return candidate, {**{name: restored[name] for name in step_targets},
                         CONFIG_ITEM: saved_config[CONFIG_ITEM]}
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except  Orbax raises many types.
      reason = _one_line(e)
      if "tree structures do not match" in str(e):
        # Readable, but of another model than this config builds: not damage to move aside.
        raise CheckpointMismatchError(
            f"The checkpoint {path} holds a model of another structure than this config "
            f"builds ({reason}). It was made by another version of simclr_jax (BYOL's, MoCo "
            f"v3's and VICReg's heads lost their last bias on 2026-12-03) or another model: "
            f"use the version that made it, or pretrain again in a fresh --workdir.") from e
      failures.append(f"step {candidate}: {reason}")
      logging.warning("Checkpoint %s is unreadable (%s)%s", path, reason,
                      "; trying an older one." if candidate != steps[-1] else ".")
  raise CheckpointError(
      f"No readable checkpoint in {manager.directory} ({'; '.join(failures)}). Move the "
      f"damaged step folders away to start again, or use a fresh --workdir.")


def _restore_args(abstract_tree, partial: bool):
  if not partial:
    return ocp.args.StandardRestore(abstract_tree)
  return ocp.args.PyTreeRestore(
      item=abstract_tree, partial_restore=True,
      restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_tree))


def damaged_dir(directory) -> epath.Path:
  """Where damaged checkpoints of `directory` are moved: beside it, never deleted."""
  directory = epath.Path(directory)
  return directory.parent / f"{directory.name}_damaged"


def _move_aside(manager: ocp.CheckpointManager, damaged_steps: Sequence[int]) -> None:
  """Moves the damaged steps newer than the one restored out of the manager's folder, so
  that the resumed run can save those steps again; the files are kept for a post-mortem."""
  target = damaged_dir(manager.directory)
  if jax.process_index() == 0:
    target.mkdir(parents=True, exist_ok=True)
    for step in damaged_steps:
      source = epath.Path(manager.directory) / str(step)
      destination = target / f"{step}-{int(time.time())}"
      source.rename(destination)
      logging.warning("Moved the damaged checkpoint %s to %s.", source, destination)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("simclr_jax.checkpoints.move_aside")
  manager.reload()


# A field that a checkpoint's config lacks (saved before the field existed) matches its
# off value: a run resumes across a code update that adds a field it does not use.
_OFF_VALUES = (None, False, "", [], ())
# Fields added later whose "off" is not in _OFF_VALUES, by their last dotted parts: the value
# that computes what the code did before the field existed. AdamW's betas and epsilon came
# with AdamW, so a checkpoint without them used LARS or SGD, which they do not touch.
_VALUES_BEFORE_THE_FIELD = {"optimizer.layer_decay": 1.0,
                            "optimizer.adam_betas": [0.9, 0.999],
                            "optimizer.adam_epsilon": 1e-8}


def _newer_field_is_off(name: str, value: Any) -> bool:
  """Whether `value` of `name`, a field the checkpoint's config lacks, leaves the
  computation as it was before the field existed."""
  before = next((v for suffix, v in _VALUES_BEFORE_THE_FIELD.items()
                 if name == suffix or name.endswith("." + suffix)), None)
  if before is not None:
    return _tuples(value) == _tuples(before)
  return value in _OFF_VALUES


def _check_same_fields(saved: dict[str, Any], current: dict[str, Any],
                       prefixes: Sequence[str], path) -> None:
  saved_flat, current_flat = (traverse_util.flatten_dict(tree, sep=".")
                                for tree in (saved, current))
  names = sorted(name for name in set(saved_flat) | set(current_flat)
                 if name.startswith(tuple(prefixes)))
  differing = [f"{name}: checkpoint {saved_flat.get(name)!r}, config {current_flat.get(name)!r}"
               for name in names if saved_flat.get(name) != current_flat.get(name)
               and not (name not in saved_flat
                        and _newer_field_is_off(name, current_flat.get(name)))]
  if differing:
    raise CheckpointMismatchError(
        f"The checkpoint {path} was made with a different config: {'; '.join(differing)}. "
        f"{_rerun_advice(epath.Path(path).parent)}, or use a fresh --workdir.")


# Where a stage's checkpoints live (`<workdir>/checkpoints` for pretraining, else
# `<workdir>/<mode>_checkpoints/<run>`) and the config file each run writes beside them
# (simclr_jax/config_text.py: `<workdir>/config/<mode>.py`).
PRETRAIN_CONFIG_FILE = "config/pretrain.py"


def _rerun_advice(directory: epath.Path) -> str:
  """How to resume from the checkpoints in `directory`: pretraining's with the config file
  its run wrote (written only once the run had resumed or started: it is theirs); another
  stage's by starting that stage's checkpoints again."""
  if directory.name == "checkpoints":
    config_file = directory.parent / PRETRAIN_CONFIG_FILE
    if config_file.exists():
      return f"To resume, rerun with --config={config_file} (the config it was made with)"
    return f"To resume, use the config it was made with (saved as JSON in {directory}/<step>/config)"
  return (f"To train it again with this config, delete {directory} (a run of this stage with "
          f"other settings)")


def adopt_fields(config, saved: dict[str, Any], prefixes: Sequence[str]):
  """`config` (a ConfigDict, left as is) with the fields under `prefixes` (dotted prefixes,
  as `check_fields`) taken from `saved`, a checkpoint's config; fields that `saved` lacks
  (newer than the checkpoint) keep the config's value.

  Returns:
    (the new ConfigDict, [(dotted name, checkpoint value, config value)] of the fields that
    differed), values as in `saved` (lists made tuples).
  """
  adopted = config.copy_and_resolve_references()
  saved_flat = traverse_util.flatten_dict(saved, sep=".")
  current_flat = traverse_util.flatten_dict(config_json(config), sep=".")
  differing = []
  with adopted.unlocked():
    for name in sorted(saved_flat):
      if not name.startswith(tuple(prefixes)) or saved_flat[name] == current_flat.get(name):
        continue
      value = _tuples(saved_flat[name])
      differing.append((name, value, _tuples(current_flat.get(name))))
      *parents, key = name.split(".")
      block = adopted
      for parent in parents:
        if parent not in block:
          block[parent] = {}
        block = block[parent]
      if key in block and block.get_ref(key).get_type() not in (type(value), type(None)):
        del block[key]  # Another type in the checkpoint (e.g. None): the checkpoint's.
      block[key] = value
  return adopted, differing


def _tuples(value):
  """JSON's lists as the config's tuples, nested."""
  return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def _warn_about_unfinished_saves(manager: ocp.CheckpointManager) -> None:
  """An interrupted save leaves a step folder that Orbax never lists (a temporary name on
  local disks; no commit marker on gs://): name each one."""
  directory = epath.Path(manager.directory)
  if not directory.exists():
    return
  listed = {str(step) for step in manager.all_steps()}
  for child in directory.iterdir():
    if UNFINISHED_MARKER in child.name or (child.name.isdigit() and child.name not in listed):
      logging.warning("Ignoring %s: an unfinished save (interrupted before it committed).",
                      child)


def _one_line(error: Exception) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:300]}"
