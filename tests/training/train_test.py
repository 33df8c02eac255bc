"""Pretraining end to end on mocked food101 with a tiny model, 8 simulated devices."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from simclr_jax import config_checks, sharding
from simclr_jax.data import sources
from simclr_jax.sharding import replicated
from simclr_jax.stages import pretrain
from simclr_jax.training import checkpoints, faults, pretrain_step
from simclr_jax.training import model as model_lib
from simclr_jax.training import state as state_lib
from tests.conftest import MOCK_EXAMPLES
from tests.support import toy_backbone
from tests.support.helpers import count_params, tiny_food101_config


def test_pretrain_one_step_on_mock_food101(pretrained_workdir):
  config = tiny_food101_config()
  summary = json.loads((pretrained_workdir / "pretrain_summary.json").read_text())
  assert jax.device_count() == 8
  assert summary["step"] == 1 and summary["devices"] == 8
  # Logits lie in [-1/tau, 1/tau], so the cross entropy over 2N - 1 candidates is bounded.
  assert 0 < summary["loss"] <= 2 / config.simclr.temperature + np.log(2 * config.batch_size - 1)
  # Head 16-32-16 on the toy's 16 features, with BatchNorm: bias-free linears, BN scale+bias,
  # last BN scale only.
  assert summary["params_head"] == toy_backbone.FEATURES * 32 + 32 * 16 + 2 * 32 + 16
  assert summary["params_encoder"] == count_params(toy_backbone.PooledPixelMLP(rngs=nnx.Rngs(0)))
  assert (pretrained_workdir / "checkpoints" / "1").is_dir()
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(pretrained_workdir))


def _restore(config, workdir):
  """(the latest checkpoint's TrainState, the freshly initialised one)."""
  tx, _ = state_lib.create_optimizer(config, 2, 3)
  target = state_lib.init_train_state(config, tx, sharding.create_mesh())
  with checkpoints.create_manager(checkpoints.checkpoint_dir(workdir)) as manager:
    _, items = checkpoints.restore(manager, target.checkpoint_items(), config)
  return state_lib.TrainState.from_checkpoint_items(items), target


def test_rerun_resumes_from_the_latest_checkpoint(two_step_workdir):
  """The session's 1-step run, rerun with num_train_steps=2 (conftest's two_step_workdir)."""
  workdir = two_step_workdir
  summary = json.loads((workdir / "pretrain_summary.json").read_text())
  assert summary["resumed_from_step"] == 1 and summary["step"] == 2
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]
  second, initial = _restore(tiny_food101_config(), workdir)
  assert int(second.step) == 2
  # (The warm-up's first learning rate is 0: step 2 is the first that moves the weights.)
  kernel = lambda state: np.asarray(state.params["head"]["linears"][0]["kernel"])
  assert not np.allclose(kernel(second), kernel(initial))


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one(pretrained_workdir, tmp_path):
  """1 step + resume to 3 == 3 steps straight: state and data stream both resume."""
  resumed, straight = tmp_path / "resumed", tmp_path / "straight"
  shutil.copytree(pretrained_workdir, resumed)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    pretrain.pretrain(tiny_food101_config(num_train_steps=3), str(resumed))
    pretrain.pretrain(tiny_food101_config(num_train_steps=3), str(straight))
  a, _ = _restore(tiny_food101_config(), resumed)
  b, _ = _restore(tiny_food101_config(), straight)
  assert int(a.step) == int(b.step) == 3
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # Bit for bit.


@pytest.mark.parametrize("separately", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_train_step_on_8_devices_equals_1_device(separately):
  """Global BatchNorm statistics and the gathered loss: sharding changes nothing. Two
  steps at a non-zero learning rate, so the parameters move and the check can fail; each
  step starts both meshes from the same state.

  Why from the same state: in this violent start (LARS, no warm-up; two steps take
  BatchNorm scales from 1 to 3.4) the second step grows the first one's float32 rounding
  a thousandfold. Run on apart, the two meshes' states after 2 steps differed by up to 4%
  of a leaf's scale on one 2-core host (2026-12-02; 1.2e-5 after one step) and under 0.2%
  on others: a test of the processor's rounding, not of the sharding.
  """
  config = tiny_food101_config()
  config.simclr.forward_views_separately = separately
  config.optimizer.warmup_epochs = 0.0  # A non-zero learning rate from the first step.
  # The tolerances below were set on the plain loss scale; the paper details (twice the
  # loss, raw [0, 1] input) round differently.
  config.simclr.sum_view_losses = False
  config.augment.normalize = True
  rng = np.random.default_rng(0)
  views = rng.integers(0, 256, size=(2, 16, 2, 16, 16, 3), dtype=np.uint8)
  tx, schedule = state_lib.create_optimizer(config, 10, 100)
  mesh_8 = sharding.create_mesh()
  mesh_1 = Mesh(np.array(jax.devices()[:1]), ("data",),
                axis_types=(jax.sharding.AxisType.Auto,))
  steps = {mesh: pretrain_step.compile_train_step(config, model_lib.model_graphdef(config),
                                                  tx, schedule, mesh)
           for mesh in (mesh_8, mesh_1)}

  def step_on(mesh, state, batch):
    new_state, metrics = steps[mesh](jax.device_put(state, replicated(mesh)),
                                     {"views": jax.device_put(batch,
                                                              NamedSharding(mesh, P("data")))})
    return jax.device_get(new_state), jax.device_get(metrics)

  state = jax.device_get(state_lib.init_train_state(config, tx, mesh_8))
  for batch in views:
    state_8, metrics_8 = step_on(mesh_8, state, batch)
    state_1, metrics_1 = step_on(mesh_1, state, batch)
    assert metrics_8["learning_rate"] > 0 and metrics_8["fault"] == 0
    np.testing.assert_allclose(metrics_8["loss"], metrics_1["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics_8["grad_norm"], metrics_1["grad_norm"], rtol=1e-4)
    for a8, a1, a0 in zip(jax.tree.leaves(state_8.params), jax.tree.leaves(state_1.params),
                          jax.tree.leaves(state.params)):
      update = np.abs(a8 - a0).max()
      assert update > 1e-6  # Every parameter moved: the comparison means something.
      # Float32 sums in another order: the two differ by under 1% of what they moved.
      assert np.abs(a8 - a1).max() <= 0.01 * update
    for a, b in zip(jax.tree.leaves(state_8), jax.tree.leaves(state_1)):
      np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4)
    state = state_8


def test_batch_size_must_divide_across_devices():
  config = tiny_food101_config(batch_size=12)
  with pytest.raises(config_checks.ConfigError, match="does not divide across 8 devices"):
    pretrain.check_config(config)


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_temperature_must_be_positive(temperature):
  config = tiny_food101_config()
  config.simclr.temperature = temperature
  with pytest.raises(config_checks.ConfigError, match="simclr.temperature must be > 0"):
    model_lib.check_model_config(config)


def test_missing_dataset_is_reported_with_instructions(tmp_path):
  config = tiny_food101_config(data_dir=str(tmp_path))
  with pytest.raises(sources.DatasetNotFoundError, match="tfds build food101"):
    pretrain.pretrain(config, str(tmp_path / "work"))


def test_blow_up_stops_at_its_step_without_applying_or_saving_it(pretrained_workdir,
                                                                  tmp_path):
  """lr 1e30 from the step-1 checkpoint, checkpoints every 7 steps, logs every 10:
  the fault is caught at the step it happens (read with the metrics, at the next
  checkpoint step), and only the good step-1 checkpoint exists afterwards."""
  workdir = tmp_path / "work"
  shutil.copytree(pretrained_workdir, workdir)
  config = tiny_food101_config(num_train_steps=20, checkpoint_every_steps=7,
                               log_every_steps=10)
  # LARS as the checkpoint was made with (a resume keeps the optimiser).
  config.optimizer.update(base_learning_rate=1e30, lr_scaling="none", warmup_epochs=0.0)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    with pytest.raises(faults.TrainingDivergedError,
                       match=r"Non-finite .* at step [2-7]: its update was not applied.*"
                             r"last good checkpoint is step 1 in .*checkpoints") as error:
      pretrain.pretrain(config, str(workdir))
  assert "\n" not in str(error.value)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1"]
  restored, _ = _restore(tiny_food101_config(), workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored))


def test_a_faulty_step_leaves_the_state_as_it_was():
  """The step that goes non-finite returns its input state, bit for bit, step included."""
  config = tiny_food101_config()
  config.optimizer.update(name="sgd", base_learning_rate=1e30, lr_scaling="none",
                          warmup_epochs=0.0)
  mesh = sharding.create_mesh()
  tx, schedule = state_lib.create_optimizer(config, 10, 100)
  state = state_lib.init_train_state(config, tx, mesh)
  step = pretrain_step.compile_train_step(config, model_lib.model_graphdef(config), tx, schedule, mesh)
  views = np.random.default_rng(0).integers(0, 256, (16, 2, 16, 16, 3), dtype=np.uint8)
  batch = {"views": jax.device_put(views, NamedSharding(mesh, P("data")))}
  for _ in range(5):
    before = jax.device_get(state)
    state, metrics = step(state, batch)
    if int(metrics["fault"]):
      break
  assert int(metrics["fault"]) != 0, "lr 1e30 should blow up within 5 steps"
  after = jax.device_get(state)
  assert int(after.step) == int(before.step)
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)


def test_online_probe_learns_from_labels_but_the_encoder_does_not():
  """With the probe, encoder and head take exactly the update they take without it."""
  config = tiny_food101_config()
  config.optimizer.warmup_epochs = 0.0  # A non-zero learning rate on the first step.
  rng = np.random.default_rng(0)
  batch = {"views": rng.integers(0, 256, size=(16, 2, 16, 16, 3), dtype=np.uint8),
           "label": rng.integers(0, 101, 16).astype(np.int32)}
  mesh = sharding.create_mesh()

  def one_step(num_probe_classes):
    tx, schedule = state_lib.create_optimizer(config, 10, 100)
    state = state_lib.init_train_state(config, tx, mesh, num_probe_classes)
    step = pretrain_step.compile_train_step(config, model_lib.model_graphdef(config, num_probe_classes),
                                    tx, schedule, mesh)
    before = jax.device_get(state.params)
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    new_state, metrics = step(state, sharded)
    return before, jax.device_get(new_state.params), jax.device_get(metrics)

  probe_before, with_probe, metrics = one_step(101)
  _, without_probe, plain_metrics = one_step(0)
  assert set(metrics) >= {"probe_loss", "probe_accuracy"} and "probe_loss" not in plain_metrics
  np.testing.assert_allclose(metrics["loss"], plain_metrics["loss"], rtol=1e-6)
  for part in ("encoder", "head"):
    for a, b in zip(jax.tree.leaves(with_probe[part]), jax.tree.leaves(without_probe[part])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert not np.allclose(with_probe["probe"]["kernel"], probe_before["probe"]["kernel"])
  # A fresh probe on 101 classes starts near chance: cross entropy about log(101).
  assert abs(metrics["probe_loss"] - np.log(101)) < 1.0


def test_the_step_compiles_once_per_run_across_saves_and_a_resume(tmp_path, monkeypatch):
  """A Python side effect runs once per trace: one trace of the step over 4 steps with a
  checkpoint every 2, and one in the run that resumes from them (the restored state has the
  shardings the step was compiled for)."""
  from simclr_jax.training import pretrain_step  # pylint: disable=g-import-not-at-top
  traces = []
  original = pretrain_step.train_step

  def counted(*args, **kwargs):
    traces.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(pretrain_step, "train_step", counted)
  workdir = tmp_path / "work"
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    pretrain.pretrain(tiny_food101_config(num_train_steps=4, checkpoint_every_steps=2), str(workdir))
    assert len(traces) == 1
    summary = pretrain.pretrain(tiny_food101_config(num_train_steps=6, checkpoint_every_steps=2),
                             str(workdir))
  assert summary["resumed_from_step"] == 4 and len(traces) == 2
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
