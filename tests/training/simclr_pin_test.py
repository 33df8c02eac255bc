"""SimCLR is unchanged by the methods carve-out: its losses over 3 steps and its model after
the first equal the values the code before it produced (tests/support/files/simclr_3_steps.npz, made by
tests/support/files/make_simclr_3_steps.py at commit 7ea9cb0, before the move)."""


import jax
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from simclr_jax import sharding
from simclr_jax.training import model as model_lib
from simclr_jax.training import pretrain_step
from simclr_jax.training import state as state_lib
from tests.support import paths
from tests.support.helpers import tiny_resnet_config

EPS32 = float(np.finfo(np.float32).eps)
PINNED = str(paths.FILES / "simclr_3_steps.npz")


def _flat(tree) -> dict[str, np.ndarray]:
  return {"/".join(map(str, k)): np.asarray(v)
          for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def _three_steps(separately: bool):
  """The generator's run: tiny food101 config, online probe, 8 devices, 3 fixed batches.

  Returns:
    (metrics (3, 3): loss, probe loss, grad norm per step; the model before the steps,
    after the first and after the 3, flattened as the pin's names).
  """
  config = tiny_resnet_config()
  config.simclr.forward_views_separately = separately
  config.optimizer.warmup_epochs = 0.0
  config.online_probe = True
  # The pin predates the paper details (configs/methods.py): the settings it was made with.
  config.model.zero_init_residual = False
  config.simclr.sum_view_losses = False
  config.optimizer.exclude_patterns = ()
  config.augment.normalize = True
  rng = np.random.default_rng(0)
  views = rng.integers(0, 256, size=(3, 16, 2, 16, 16, 3), dtype=np.uint8)
  labels = rng.integers(0, 101, size=(3, 16), dtype=np.int32)
  mesh = sharding.create_mesh()
  tx, schedule = state_lib.create_optimizer(config, 10, 100)
  state = state_lib.init_train_state(config, tx, mesh, 101)
  models = [_flat({"params": state.params, "batch_stats": state.batch_stats})]
  step = pretrain_step.compile_train_step(config, model_lib.model_graphdef(config, 101), tx,
                                          schedule, mesh, 100)
  data = NamedSharding(mesh, P("data"))
  metrics = []
  for v, l in zip(views, labels):
    state, m = step(state, {"views": jax.device_put(v, data), "label": jax.device_put(l, data)})
    m = jax.device_get(m)
    metrics.append([m["loss"], m["probe_loss"], m["grad_norm"]])
    models.append(_flat({"params": state.params, "batch_stats": state.batch_stats}))
  return np.array(metrics, np.float32), models[0], models[1], models[3]


# Slow (13 s a setting: three ResNet steps compiled at XLA's full optimisation level would
# be more): the default suite checks the loss against its references (tests/losses/), the
# step on 8 devices against 1 and every method's step (tests/methods/) on the toy backbone.
@pytest.mark.slow
@pytest.mark.parametrize("separately", [False, True])
def test_simclr_after_3_steps_equals_the_code_before_the_carve_out(separately):
  tag = "separately" if separately else "together"
  pinned = np.load(PINNED)
  metrics, initial, first, final = _three_steps(separately)
  expected = {k[len(tag) + 1:]: pinned[k] for k in pinned.files if k.startswith(tag + "/")}
  expected_first = {k[len("step1/"):]: v for k, v in expected.items() if k.startswith("step1/")}
  assert sorted(final) == sorted(expected_first)  # Same model tree.
  assert sorted(final) == sorted(k for k in expected if k != "metrics" and k not in
                                 {"step1/" + n for n in expected_first})
  # Bit for bit on the machine that made the pin. Another processor rounds XLA's CPU sums
  # differently, and these steps (LARS, no warm-up: the parameters move by 60% of their
  # norm) grow that: the code before the carve-out (7ea9cb0's generator) and today's
  # agreed bit for bit with each other on one 2-core host (2026-12-02), and both sat
  # 5e-7 / 7e-4 / 9e-3 (relative) off the pin's metrics at steps 1 / 2 / 3, and their
  # 3-step parameters 5% (that host) and 15.5% (another) of the update off the pin's. So
  # the first step, where rounding has not grown, is held tightly: its metrics (model,
  # loss, probe, gradients) and the model after it (LARS's update, weight decay's masks);
  # the next two steps' metrics within what rounding grows to.
  np.testing.assert_allclose(metrics[0], expected["metrics"][0], rtol=2e-6)
  np.testing.assert_allclose(metrics[1:], expected["metrics"][1:], rtol=2e-2)
  for name, value in first.items():
    move = np.abs(expected_first[name] - initial[name]).max()
    if name.startswith("params/"):
      assert move > 0, name  # Every parameter moved: the comparison can fail.
    # Within 1% of the step's move (float32 resolution at the leaf's scale for leaves
    # that barely move, such as the probe's kernel).
    bound = 1e-2 * move + 4 * EPS32 * np.abs(expected_first[name]).max()
    assert np.abs(value - expected_first[name]).max() <= bound, name
