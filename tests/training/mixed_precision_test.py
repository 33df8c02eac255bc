"""Mixed precision (config.compute_dtype='bfloat16'): bfloat16 convolutions and dense layers,
float32 parameters, optimiser state, BatchNorm statistics and loss; results that track
float32's."""

import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import demo
from simclr_jax import sharding
from simclr_jax.data import input_pipeline
from simclr_jax.evaluation import encoding, linear_probe
from simclr_jax.stages import pretrain
from simclr_jax.training import model as model_lib
from simclr_jax.training import pretrain_step
from simclr_jax.training import state as state_lib
from tests.conftest import MOCK_EXAMPLES
from tests.support.helpers import tiny_food101_config, tiny_resnet_config


def _step_and_state(config):
  mesh = sharding.create_mesh()
  tx, schedule = state_lib.create_optimizer(config, 10, 100)
  state = state_lib.init_train_state(config, tx, mesh)
  step = pretrain_step.compile_train_step(config, model_lib.model_graphdef(config), tx, schedule, mesh)
  views = np.random.default_rng(0).integers(0, 256, (16, 2, 16, 16, 3), dtype=np.uint8)
  return step, state, {"views": jax.device_put(views, NamedSharding(mesh, P("data")))}


def test_the_step_convolves_in_bfloat16_and_keeps_float32_state_and_loss():
  """The ResNet's step as lowered (its convolutions and the head's dense layers in bfloat16;
  float32 stays float32), and a compiled bfloat16 step on the toy backbone, run: its state
  and loss float32 (compiling the ResNet's bfloat16 step costs 20 s on CPU)."""
  step, state, batch = _step_and_state(tiny_resnet_config(compute_dtype="bfloat16"))
  hlo = step.lower(state, batch).as_text()
  convolutions = re.findall(r"stablehlo.convolution.*", hlo)
  assert convolutions and all("bf16" in c for c in convolutions), convolutions[:2]
  dots = re.findall(r"stablehlo.dot_general.*", hlo)
  assert any("bf16" in d for d in dots)  # The head's dense layers.
  step32, state32, batch32 = _step_and_state(tiny_resnet_config())
  assert "bf16" not in step32.lower(state32, batch32).as_text()  # float32 by default.
  step, state, batch = _step_and_state(tiny_food101_config(compute_dtype="bfloat16"))
  assert "bf16" in step.lower(state, batch).as_text()
  new_state, metrics = step(state, batch)
  assert {x.dtype for x in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(new_state.batch_stats)} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(new_state.opt_state)
          if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
  assert metrics["loss"].dtype == jnp.float32 and int(metrics["fault"]) == 0


def test_checkpoints_move_between_float32_and_bfloat16(pretrained_workdir, tmp_path):
  """A float32 checkpoint resumes under bfloat16 and back: parameters are float32 in both."""
  workdir = tmp_path / "work"
  shutil.copytree(pretrained_workdir, workdir)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    bf16 = pretrain.pretrain(tiny_food101_config(num_train_steps=2, compute_dtype="bfloat16"),
                          str(workdir))
    f32 = pretrain.pretrain(tiny_food101_config(num_train_steps=3), str(workdir))
  assert (bf16["resumed_from_step"], bf16["step"]) == (1, 2)
  assert (f32["resumed_from_step"], f32["step"]) == (2, 3)
  assert np.isfinite(bf16["loss"]) and np.isfinite(f32["loss"])


@pytest.mark.slow
def test_linear_and_knn_results_under_bfloat16_agree_with_float32():
  """The digits through one encoder, features in float32 and in bfloat16. bfloat16 keeps 8
  bits of mantissa (0.4% per rounding); through the 17 convolution + BatchNorm layers of a
  ResNet-18 the roundings add up like a random walk, sqrt(17) x 0.4% = 1.6%: the features
  agree within 2% on average and 5% at worst (measured: 1% and 2.5%), and the linear and kNN
  accuracies on the 450 test digits within 2 points (9 digits)."""
  results = {}
  features = {}
  for dtype in ("float32", "bfloat16"):
    config = demo.get_config()
    config.compute_dtype = dtype
    config.model.width_multiplier = 0.0625
    config.linear_eval.epochs = 20
    config.linear_eval.few_shot_per_class = 0
    mesh = sharding.create_mesh()
    source = input_pipeline.create_source(config)
    state = encoding.EncoderState(**model_lib.init_model(config, mesh, num_probe_classes=10))
    encode = encoding.make_encoder(model_lib.model_graphdef(config, 10), config.augment.normalize)
    train_x, train_y = encoding.split_features(config, encode, state, mesh, source, "train")
    test_x, test_y = encoding.split_features(config, encode, state, mesh, source, "test")
    assert train_x.dtype == np.float32
    features[dtype] = test_x
    results[dtype] = linear_probe.probe(train_x, train_y, test_x, test_y, 10,
                                       config.linear_eval, config.seed)
  relative = (np.linalg.norm(features["bfloat16"] - features["float32"], axis=1)
              / np.linalg.norm(features["float32"], axis=1))
  assert 0 < relative.mean() < 0.02 and relative.max() < 0.05  # bfloat16 ran, and is close.
  for key in ("top1", "top5", "knn_top1"):
    assert abs(results["bfloat16"][key] - results["float32"][key]) <= 0.02, (key, results)
  assert results["float32"]["knn_top1"] > 0.5  # Far above chance: a meaningful comparison.


@pytest.mark.slow
def test_bfloat16_tracks_the_float32_loss_on_the_demo_over_100_steps():
  """Same data, same initial parameters, 100 demo steps (the loss falls from 8.1 to 5.2).

  Tolerance: the means over each 10 steps within 5% of float32's, single steps within 15%.
  Why: bfloat16 rounds every activation to 8 bits of mantissa, so the two runs take slightly
  different updates from the first step on and drift apart slowly (measured: window means
  0.2% apart at first, at most 3.5% later, bfloat16 a little behind; single steps at most
  10%, their batch-to-batch noise included). A real fault (a float32-only op in bfloat16,
  a loss computed in bfloat16, a dtype mismatch in BatchNorm) shows as a gap that grows
  well past these, or as no learning.
  """
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = demo.get_config()
    config.compute_dtype = dtype
    config.num_train_steps = 100
    mesh = sharding.create_mesh()
    source = input_pipeline.create_source(config)
    steps_per_epoch, num_steps = state_lib.training_length(config, source.num_examples("train"))
    tx, schedule = state_lib.create_optimizer(config, steps_per_epoch, num_steps)
    state = state_lib.init_train_state(config, tx, mesh, num_probe_classes=10)
    step = pretrain_step.compile_train_step(config, model_lib.model_graphdef(config, 10), tx, schedule,
                                    mesh)
    batches = input_pipeline.global_batches(
        input_pipeline.pretrain_dataset(config, source).as_numpy_iterator(),
        NamedSharding(mesh, P("data")))
    trace = []
    for _, batch in zip(range(100), batches):
      state, metrics = step(state, batch)
      trace.append(metrics["loss"])
    losses[dtype] = np.asarray(jax.device_get(trace))
  windows = {dtype: trace.reshape(10, 10).mean(axis=1) for dtype, trace in losses.items()}
  for trace in windows.values():
    assert trace[-1] < 0.8 * trace[0]  # Both learned.
  window_gap = np.abs(windows["bfloat16"] - windows["float32"]) / windows["float32"]
  step_gap = np.abs(losses["bfloat16"] - losses["float32"]) / losses["float32"]
  assert window_gap.max() < 0.05 and step_gap.max() < 0.15, (window_gap, step_gap.max())
