"""Drop-path (the ViT's stochastic depth) in the pretraining step: its masks come from the
state's key and step (the same when repeated or resumed, others at another step or seed),
they are the same on 8 devices as on 1, and a rate of 0 leaves the step as it was.

A tiny ViT ('mu': width 64, 4 blocks) on 8 px images with 4 px patches (4 patches), so
that each compile takes seconds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from simclr_jax import methods, precision, sharding
from simclr_jax.methods import base
from simclr_jax.sharding import replicated
from simclr_jax.training import model as model_lib
from simclr_jax.training import pretrain_step, randomness
from simclr_jax.training import state as state_lib
from tests.support.helpers import tiny_vit_method_config

RATE = 0.5  # At the last of 4 blocks (0, 1/6, 1/3, 1/2): most steps drop some branch.


def _views(seed=0):
  return np.random.default_rng(seed).integers(0, 256, (16, 2, 8, 8, 3), np.uint8)


class _Stepper:
  """One compiled pretraining step of `config` on `mesh`, run from a host copy of the
  initial state (the step donates its input) at any step number or state key."""

  def __init__(self, config, mesh):
    self.config, self.mesh = config, mesh
    tx, schedule = state_lib.create_optimizer(config, 10, 100)
    self.initial = jax.device_get(state_lib.init_train_state(config, tx, mesh))
    self.step = pretrain_step.compile_train_step(
        config, model_lib.model_graphdef(config), tx, schedule, mesh, 100)

  def __call__(self, views, step=0, seed=None):
    state = self.initial.replace(step=np.int32(step))
    if seed is not None:
      state = state.replace(rng=np.asarray(jax.random.PRNGKey(seed)))
    state, metrics = self.step(jax.device_put(state, replicated(self.mesh)),
                               {"views": jax.device_put(views, NamedSharding(self.mesh,
                                                                             P("data")))})
    return jax.device_get(state), jax.device_get(metrics)


def _method_loss(config, mesh, params, stats, keys=(None,)):
  """The method's loss on the 8 px model input of views, once per entry of `keys` (None:
  no rngs; a key: nnx.Rngs(dropout=key)), compiled once: (views (N, 2, 8, 8, 3) uint8) ->
  (len(keys),) losses."""
  method = methods.get(config)
  graphdef = model_lib.model_graphdef(config)
  target_params = {**params, **base.target_part(params, method.target_modules)}

  @jax.jit
  def losses(views):
    model_input = precision.to_model_input(views, config.augment.normalize)
    values = []
    for key in keys:
      model = nnx.merge(graphdef, params, stats)
      target = nnx.merge(graphdef, target_params, stats) if method.target_modules else None
      rngs = None if key is None else nnx.Rngs(dropout=key)
      values.append(method.loss(model, target, model_input, config[method.name], mesh,
                                rngs)[0])
    return jnp.stack(values)

  return losses


def test_a_step_s_drop_path_follows_the_state_s_key_and_step():
  """The same state, batch and step: the same loss (a resumed run repeats its masks);
  another step or another key: another loss; and the step's loss is the method's loss
  with the documented key, fold_in(fold_in(PRNGKey(seed), stream 1), step), computed
  outside the step."""
  mesh = sharding.create_mesh()
  config = tiny_vit_method_config("simclr", RATE)
  stepper = _Stepper(config, mesh)
  views = _views()
  losses = {(step, seed): float(stepper(views, step, seed)[1]["loss"])
            for step, seed in ((0, None), (3, None), (0, 1))}
  assert float(stepper(views)[1]["loss"]) == losses[0, None]
  assert np.asarray(stepper.initial.rng).tolist() == np.asarray(
      jax.random.PRNGKey(config.seed)).tolist()
  keys = [jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), step)
          for step, seed in ((0, config.seed), (3, config.seed), (0, 1))]
  params, stats = jax.device_put((stepper.initial.params, stepper.initial.batch_stats),
                                 replicated(mesh))
  with jax.set_mesh(mesh):
    expected = np.asarray(_method_loss(config, mesh, params, stats, keys)(
        jax.device_put(views, NamedSharding(mesh, P("data")))))
  np.testing.assert_allclose(list(losses.values()), expected, rtol=1e-5)
  # Drop-path moves SimCLR's loss (about 5.5 here) by percents; float noise by 1e-6.
  for loss in losses.values():
    assert sum(abs(loss - other) < 1e-3 * abs(loss) for other in expected) == 1, expected


def test_at_rate_0_the_randomness_changes_nothing():
  """Existing configs (rate 0): the loss with any rngs is the loss without, bit for bit,
  so the steps compute what they computed before drop-path was wired (the ResNet's pinned
  steps, tests/training/simclr_pin_test.py, say the same of the ResNet)."""
  config = tiny_vit_method_config("simclr", 0.0)
  config.simclr.forward_views_separately = True  # Two draws.
  mesh = sharding.create_mesh()
  item = model_lib.init_model(config, mesh)
  keys = (None, jax.random.key(0), jax.random.key(1))
  with jax.set_mesh(mesh):
    losses = np.asarray(_method_loss(config, mesh, item["params"], item["batch_stats"], keys)(
        jax.device_put(_views(1), NamedSharding(mesh, P("data")))))
  assert np.isfinite(losses).all()
  np.testing.assert_array_equal(losses, losses[0])


def _one_device_mesh():
  return Mesh(np.array(jax.devices()[:1]), ("data",),
              axis_types=(jax.sharding.AxisType.Auto,))


def test_drop_path_on_8_devices_equals_1_device():
  """The key is replicated and Threefry is partitionable: the masks over a batch sharded 8
  ways are one device's: SimCLR with a pass per view (a key each), its negatives gathered
  across devices (the whole MoCo v3 step: the slow test below). The loss without rngs is
  the check that drop-path was on."""
  config = tiny_vit_method_config("simclr", RATE)
  config.simclr.forward_views_separately = True
  views = _views(2)
  keys = (None, jax.random.key(5))
  results = []
  item = jax.device_get(model_lib.init_model(config, sharding.create_mesh()))
  for mesh in (sharding.create_mesh(), _one_device_mesh()):
    item = jax.device_put(item, replicated(mesh))
    with jax.set_mesh(mesh):
      results.append(np.asarray(_method_loss(
          config, mesh, item["params"], item["batch_stats"], keys)(
              jax.device_put(views, NamedSharding(mesh, P("data"))))))
  (plain_8, dropped_8), (plain_1, dropped_1) = results
  # The loss is about 5.5 here; another mask moves it by percents, float sums by 1e-6.
  np.testing.assert_allclose(dropped_8, dropped_1, rtol=1e-5)
  np.testing.assert_allclose(plain_8, plain_1, rtol=1e-5)
  assert abs(dropped_8 - plain_8) > 1e-3 * abs(plain_8)


@pytest.mark.slow  # Two compiled MoCo v3 steps (about 30 s on 2 cores); the loss's is fast.
def test_a_drop_path_step_on_8_devices_equals_1_device():
  """The whole step (gradients through the dropped branches, the update), at step 5."""
  config = tiny_vit_method_config("mocov3", RATE)
  views = _views(2)
  state_8, metrics_8 = _Stepper(config, sharding.create_mesh())(views, step=5)
  stepper_1 = _Stepper(config, _one_device_mesh())
  state_1, metrics_1 = stepper_1(views, step=5)
  assert metrics_8["fault"] == 0
  np.testing.assert_allclose(metrics_8["loss"], metrics_1["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics_8["grad_norm"], metrics_1["grad_norm"], rtol=1e-4)
  for a8, a1, a0 in zip(jax.tree.leaves(state_8.params), jax.tree.leaves(state_1.params),
                        jax.tree.leaves(stepper_1.initial.params)):
    assert np.abs(a8 - a1).max() <= 0.01 * np.abs(a8 - a0).max() + 1e-7
  # Drop-path was on: at another step (other masks) the loss differs by far more.
  other = float(stepper_1(views, step=6)[1]["loss"])
  assert abs(other - float(metrics_1["loss"])) > 1e-3 * abs(other)


def test_step_rngs_draw_a_new_key_per_call_from_the_documented_derivation():
  """fold_in(fold_in(key, stream), step), then one key per draw: what the training steps
  and a resumed run rely on, against jax.random by hand."""
  seed, step = 7, 11
  base = jax.random.fold_in(jax.random.key(seed), randomness.PRETRAIN_STREAM)
  rngs = randomness.step_rngs(randomness.run_key(jax.random.PRNGKey(seed),
                                                 randomness.PRETRAIN_STREAM), step)
  first, second = rngs.dropout(), rngs.dropout()
  expected = nnx.Rngs(dropout=jax.random.fold_in(base, step))
  for key in (first, second):
    np.testing.assert_array_equal(jax.random.key_data(key),
                                  jax.random.key_data(expected.dropout()))
  assert not np.array_equal(jax.random.key_data(first), jax.random.key_data(second))
  finetune = randomness.run_key(seed, randomness.FINETUNE_STREAM)
  assert not np.array_equal(jax.random.key_data(finetune), jax.random.key_data(base))
