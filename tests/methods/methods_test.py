"""Every registered method on the shared trainer: builds, steps on 8 devices as on 1,
checkpoints, and hands its encoder to the evaluation stages; the EMA target follows its
formula and schedule and never receives a gradient."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from simclr_jax import methods, sharding
from simclr_jax.methods import base
from simclr_jax.stages import pretrain
from simclr_jax.training import model as model_lib
from simclr_jax.training import pretrain_step
from simclr_jax.training import state as state_lib
from tests.support.helpers import (on_tiny_vit, probed_config, tiny_method_config,
                                   tiny_vit_method_config)

METHOD_NAMES = sorted(methods.METHODS)


def test_the_registry_holds_the_four_methods():
  assert METHOD_NAMES == ["byol", "mocov3", "simclr", "vicreg"]
  for name, method in methods.METHODS.items():
    assert method.name == name


def _steps(config, mesh, views, labels=None):
  """Runs one step per batch of `views` ((steps, N, 2, H, W, 3) uint8) on `mesh`."""
  tx, schedule = state_lib.create_optimizer(config, 10, 100)
  num_classes = 101 if labels is not None else 0
  state = state_lib.init_train_state(config, tx, mesh, num_classes)
  initial = jax.device_get(state)
  step = pretrain_step.compile_train_step(
      config, model_lib.model_graphdef(config, num_classes), tx, schedule, mesh, 100)
  data = NamedSharding(mesh, P("data"))
  for index, batch in enumerate(views):
    inputs = {"views": jax.device_put(batch, data)}
    if labels is not None:
      inputs["label"] = jax.device_put(labels[index], data)
    state, metrics = step(state, inputs)
  return initial, jax.device_get(state), jax.device_get(metrics)


@pytest.mark.slow  # Two compilations per method; the sharded losses' own tests are fast.
@pytest.mark.parametrize("backbone", ["toy", "vit"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_step_on_8_devices_equals_1_device(name, backbone):
  """Global BatchNorm, gathered keys (MoCo v3) and the global covariance (VICReg):
  sharding changes nothing, on the toy backbone and on the tiny ViT (its attention and
  LayerNorms per example, BatchNorm in the heads only). The parameters move, so the
  comparison can fail."""
  config = tiny_method_config(name)
  if backbone == "vit":
    on_tiny_vit(config)
  config.optimizer.warmup_epochs = 0.0
  views = np.random.default_rng(0).integers(0, 256, (1, 16, 2, 16, 16, 3), np.uint8)
  initial, state_8, metrics_8 = _steps(config, sharding.create_mesh(), views)
  mesh_1 = Mesh(np.array(jax.devices()[:1]), ("data",),
                axis_types=(jax.sharding.AxisType.Auto,))
  _, state_1, metrics_1 = _steps(config, mesh_1, views)
  assert metrics_8["fault"] == 0 and np.isfinite(metrics_8["loss"])
  # Float32 sums in another order: SimCLR's loss (13.4, both views' terms) differed by 1.6e-5
  # relative on the toy backbone (2026-12-03); a sharding error (per-device BatchNorm
  # statistics or negatives) moves it by percents.
  np.testing.assert_allclose(metrics_8["loss"], metrics_1["loss"], rtol=5e-5)
  np.testing.assert_allclose(metrics_8["grad_norm"], metrics_1["grad_norm"], rtol=1e-4)
  # The ViT's final LayerNorm bias shifts every example's features alike, which the heads'
  # first BatchNorm (after a bias-free Linear) takes out again: its gradient is zero but for
  # rounding, so each mesh moves it by its own noise (under 1e-6 here, 2026-12-03).
  noise = "['encoder']['norm']['bias']" if backbone == "vit" else None
  for (path, a8), a1, a0 in zip(jax.tree_util.tree_leaves_with_path(state_8.params),
                                jax.tree.leaves(state_1.params), jax.tree.leaves(initial.params)):
    update = np.abs(a8 - a0).max()
    if jax.tree_util.keystr(path) == noise:
      assert max(update, np.abs(a1 - a0).max()) < 1e-5
      continue
    assert update > 0
    assert np.abs(a8 - a1).max() <= 0.01 * update + 1e-7
  # The whole state (optimiser moments, BatchNorm statistics, the EMA target, the step) to
  # the same rounding, relative to each array's scale (at most 1.3e-4 on the ViT); every
  # metric too (at most 1e-5).
  assert jax.tree.structure(state_8) == jax.tree.structure(state_1)
  for (path, a8), a1 in zip(jax.tree_util.tree_leaves_with_path(state_8),
                            jax.tree.leaves(state_1)):
    if noise is None or not jax.tree_util.keystr(path).endswith(noise):
      assert np.abs(a8 - a1).max() <= 1e-3 * np.abs(a8).max() + 1e-7, path
  assert metrics_8.keys() == metrics_1.keys()
  for key, value in metrics_8.items():
    np.testing.assert_allclose(value, metrics_1[key], rtol=1e-4, atol=1e-6, err_msg=key)
  has_target = bool(methods.METHODS[name].target_modules)
  assert (state_8.target is not None) == has_target


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_pretrain_checkpoint_and_the_encoder_for_evaluation(name, probed_workdir):
  """main.py's stage: 2 steps on mock food101 with the online probe (conftest's
  probed_workdir), a checkpoint that resumes into the same state, and the encoder that the
  evaluation stages restore."""
  config = probed_config(name)
  tmp_path = probed_workdir(name)
  summary = json.loads((tmp_path / "pretrain_summary.json").read_text())
  assert summary["method"] == name and summary["step"] == 2
  assert np.isfinite(summary["loss"]) and "probe_loss" in summary

  mesh = sharding.create_mesh()
  tx, _ = state_lib.create_optimizer(config, 2, 2)
  fresh = state_lib.init_train_state(config, tx, mesh, 101)
  from simclr_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  with checkpoints.create_manager(checkpoints.checkpoint_dir(tmp_path)) as manager:
    step, items = checkpoints.restore(manager, fresh.checkpoint_items(), config,
                                      check_fields=pretrain.resume_fields(config))
  resumed = state_lib.TrainState.from_checkpoint_items(items)
  assert step == 2 and int(resumed.step) == 2
  assert (resumed.target is not None) == bool(methods.METHODS[name].target_modules)
  # Training moved the encoder away from its initialisation.
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
      jax.tree.leaves(resumed.params["encoder"]), jax.tree.leaves(fresh.params["encoder"]))]
  assert max(moved) > 0

  eval_step, model = model_lib.restore_model(config, str(tmp_path), mesh, 101)
  assert eval_step == 2
  for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(items["model"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The frozen encoder maps images to (B, num_features) features.
  graphdef = model_lib.model_graphdef(config, 101)
  encoder = nnx.merge(graphdef, model["params"], model["batch_stats"]).encoder
  features = encoder(jnp.zeros((2, 16, 16, 3)), train=False)
  assert features.shape == (2, encoder.num_features)


def test_target_momentum_schedule_is_byols_cosine():
  schedule = base.target_momentum_schedule(0.99, 1.0, 1000)
  for k in (0, 1, 250, 500, 999, 1000, 1200):
    expected = 1 - (1 - 0.99) * (math.cos(math.pi * min(k, 1000) / 1000) + 1) / 2
    np.testing.assert_allclose(float(schedule(k)), expected, rtol=1e-6)
  assert float(schedule(0)) == pytest.approx(0.99) and float(schedule(1000)) == 1.0


@pytest.mark.parametrize("name", ["byol", pytest.param("mocov3", marks=pytest.mark.slow)])
def test_the_target_is_the_ema_of_the_updated_online_weights(name):
  """After a step, target = m * old target + (1 - m) * new online (m = the schedule at the
  step), exactly: no gradient and no optimiser update reaches it."""
  config = tiny_method_config(name)
  config.optimizer.warmup_epochs = 0.0
  config[name].base_target_momentum = 0.9  # Far from 1, so the EMA visibly moves.
  views = np.random.default_rng(1).integers(0, 256, (2, 16, 2, 16, 16, 3), np.uint8)
  mesh = sharding.create_mesh()
  tx, schedule = state_lib.create_optimizer(config, 10, 100)
  state = state_lib.init_train_state(config, tx, mesh)
  step = pretrain_step.compile_train_step(config, model_lib.model_graphdef(config), tx,
                                          schedule, mesh, 100)
  momentum = base.target_momentum_schedule(0.9, 1.0, 100)
  for index, batch in enumerate(views):
    before = jax.device_get(state.target["params"])
    state, metrics = step(state, {"views": jax.device_put(batch, NamedSharding(mesh, P("data")))})
    after, online = jax.device_get((state.target["params"], state.params))
    m = float(momentum(index))
    np.testing.assert_allclose(float(metrics["target_momentum"]), m, rtol=1e-6)
    for module in ("encoder", "projector"):
      for t0, t1, o in zip(jax.tree.leaves(before[module]), jax.tree.leaves(after[module]),
                           jax.tree.leaves(online[module])):
        np.testing.assert_allclose(t1, m * t0 + (1 - m) * o, rtol=1e-5, atol=1e-7)
    assert set(after) == {"encoder", "projector"}  # The predictor has no target.
  # After two steps the target differs from the online network (it lags behind it).
  assert max(np.abs(a - b).max() for a, b in zip(
      jax.tree.leaves(after["encoder"]), jax.tree.leaves(online["encoder"]))) > 0


@pytest.mark.parametrize("name", ["byol", "mocov3"])
def test_the_loss_sends_no_gradient_to_the_target(name):
  config = tiny_method_config(name)
  method = methods.METHODS[name]
  mesh = sharding.create_mesh()
  graphdef = model_lib.model_graphdef(config)
  model_item = model_lib.init_model(config, mesh)
  views = jax.random.uniform(jax.random.key(0), (16, 2, 16, 16, 3))

  def loss_of(params, target_params):
    model = nnx.merge(graphdef, params, model_item["batch_stats"])
    target = nnx.merge(graphdef, {**params, **target_params}, model_item["batch_stats"])
    return method.loss(model, target, views, config[name], mesh)[0]

  target_params = base.target_part(model_item["params"], method.target_modules)
  with jax.set_mesh(mesh):  # Compiled: op by op it took 16 s.
    online_grads, target_grads = jax.jit(jax.grad(loss_of, argnums=(0, 1)))(
        model_item["params"], target_params)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(target_grads))
  assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(online_grads["predictor"]))


def _view_outputs(name, separately, *batches):
  """A method's outputs for each of `batches` ((N, 2, H, W, 3) views), one pass per view
  or one for both: the features its loss returns, and its heads' outputs through `base`'s
  two-view passes (BYOL's and MoCo v3's predictions and target projections). One compile."""
  config = tiny_method_config(name)
  config[name].forward_views_separately = separately
  method = methods.METHODS[name]
  mesh = sharding.create_mesh()
  graphdef = model_lib.model_graphdef(config)
  item = model_lib.init_model(config, mesh)

  @jax.jit
  def outputs(views):
    model = nnx.merge(graphdef, item["params"], item["batch_stats"])
    target = nnx.merge(graphdef, item["params"], item["batch_stats"])
    features = method.loss(model, target, views, config[name], mesh)[1]
    if method.target_modules:
      heads = base.predictions_and_targets(model, target, views, separately)[1:]
    else:
      heads = base.forward_views(base.encoder_then(model, method.projection_head), views,
                                 separately)[1:]
    return (features, *heads)

  with jax.set_mesh(mesh):
    return [[np.asarray(x) for x in outputs(views)] for views in batches]


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_with_a_pass_per_view_a_view_s_outputs_ignore_the_other_view(name):
  """Per-view BatchNorm statistics (the BYOL, MoCo v3 and VICReg codes): view 1's outputs
  are the same whatever view 2 holds; in one joint pass (SimCLR's, checked on SimCLR: a
  compile per setting) they are not."""
  rng = np.random.default_rng(0)
  views = rng.uniform(size=(8, 2, 8, 8, 3)).astype(np.float32)
  other = views.copy()
  other[:, 1] = rng.uniform(size=other[:, 1].shape)
  for separately in (True, False) if name == "simclr" else (True,):
    outputs, outputs_other = _view_outputs(name, separately, views, other)
    for a, b in zip(outputs, outputs_other):
      if separately:
        np.testing.assert_array_equal(a[:, 0], b[:, 0])
      else:
        assert np.abs(a[:, 0] - b[:, 0]).max() > 1e-4
  # Each recipe's default: SimCLR's code passes both views at once, the others one at a time.
  assert tiny_method_config(name)[name].forward_views_separately == (name != "simclr")


@pytest.mark.parametrize("name, heads", [("byol", ("projector", "predictor")),
                                          ("mocov3", ("projector", "predictor")),
                                          ("vicreg", ("expander",))])
def test_the_heads_end_without_a_bias_as_the_official_ones(name, heads):
  model = nnx.eval_shape(lambda: model_lib.build_model(tiny_method_config(name), nnx.Rngs(0)))
  for head in heads:
    linears = getattr(model, head).linears
    assert linears[-1].bias is None, head
    assert all(linear.bias is None for linear in linears[:-1])  # BatchNorm's shift instead.


@pytest.mark.parametrize("last_batch_norm", [False, True])
def test_mocov3s_vit_predictor_ends_in_batchnorm_without_affine(last_batch_norm):
  """moco/builder.py: the ResNet recipe's predictor ends at its Linear (last_bn=False), the
  ViT recipe's in BatchNorm1d(affine=False): each output feature standardised over the batch."""
  config = tiny_method_config("mocov3")
  config.mocov3.predictor_last_batch_norm = last_batch_norm
  model = model_lib.build_model(config, nnx.Rngs(0))
  predictor = model.predictor
  assert len(predictor.norms) == len(predictor.linears) - (0 if last_batch_norm else 1)
  if last_batch_norm:
    assert predictor.norms[-1].scale is None and predictor.norms[-1].bias is None
  inputs = jax.random.normal(jax.random.key(0), (64, config.mocov3.projector_widths[-1])) * 3
  outputs = np.asarray(predictor(inputs, train=True))
  standardised = np.allclose(outputs.mean(0), 0, atol=1e-4) and np.allclose(
      outputs.std(0), 1, atol=1e-2)
  assert standardised == last_batch_norm


@pytest.mark.parametrize("name", ["byol", pytest.param("mocov3", marks=pytest.mark.slow)])
def test_drop_path_reaches_the_online_encoder_only(name):
  """With rngs, BYOL's and MoCo v3's online passes run drop-path and the target's do not:
  the target projections equal the same weights' without drop-path (a rate-0 model's
  projector'(encoder'(x)) in training mode); each view's online pass draws its own masks
  (the same image as both views, different features)."""
  config = tiny_vit_method_config(name, 0.5)
  assert config[name].forward_views_separately
  mesh = sharding.create_mesh()
  item = model_lib.init_model(config, mesh)
  dropping = model_lib.model_graphdef(config)
  plain = model_lib.model_graphdef(tiny_vit_method_config(name, 0.0))
  image = jax.random.uniform(jax.random.key(0), (16, 1, 8, 8, 3))
  views = jnp.concatenate([image, image], axis=1)  # (16, 2, 8, 8, 3): the same image twice.

  @jax.jit
  def outputs(views):
    model = nnx.merge(dropping, item["params"], item["batch_stats"])
    target = nnx.merge(dropping, item["params"], item["batch_stats"])
    features, _, targets = base.predictions_and_targets(model, target, views, True,
                                                        nnx.Rngs(dropout=3))
    reference = nnx.merge(plain, item["params"], item["batch_stats"])
    expected = [reference.projector(reference.encoder(views[:, i], train=True), train=True)
                for i in range(2)]
    return features, targets, jnp.stack(expected, axis=1)

  with jax.set_mesh(mesh):
    features, targets, expected = jax.device_get(outputs(views))
  np.testing.assert_allclose(targets, expected, rtol=1e-5, atol=1e-6)
  assert np.abs(targets[:, 0] - targets[:, 1]).max() < 1e-5  # The same image, no masks.
  assert np.abs(features[:, 0] - features[:, 1]).max() > 1e-2
