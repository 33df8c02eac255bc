"""Weight-decay mask, LARS and SGD updates against NumPy emulations, and LR schedules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default as default_config
from configs import food101_seed
from simclr_jax.training import model as model_lib
from simclr_jax.training import optim


def _tiny_model_config(head_batch_norm):
  config = default_config.get_config()
  config.model.depth = 18
  config.model.width_multiplier = 0.125
  config.model.small_image_stem = True
  config.simclr.head_widths = (16, 8)
  config.simclr.head_batch_norm = head_batch_norm
  return config


def _abstract_model(head_batch_norm):
  # Structure and shapes only: the optimiser tests fill in their own numbers.
  return nnx.eval_shape(
      lambda: model_lib.build_model(_tiny_model_config(head_batch_norm), nnx.Rngs(0)))


def _expected_mask(model):
  """True for the kernel of every nnx.Conv / nnx.Linear, found by module type."""
  kernels = set()
  for path, node in nnx.iter_graph(model):
    if isinstance(node, (nnx.Conv, nnx.Linear)):
      kernels.add(tuple(path) + ("kernel",))
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat = {tuple(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(pure)}
  assert kernels <= set(flat)
  return pure, {path: path in kernels for path in flat}


def _flat(tree):
  return {tuple(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _random_like(tree, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), tree)


@pytest.fixture(scope="module", params=[True, False], ids=["head_bn", "head_bias"])
def model_params(request):
  model = _abstract_model(request.param)
  pure, expected = _expected_mask(model)
  return model, pure, expected


# ---------------------------------------------------------------------------------------
# decay_mask.
# ---------------------------------------------------------------------------------------


def test_decay_mask_selects_exactly_conv_and_linear_kernels(model_params):
  model, pure, expected = model_params
  mask = _flat(optim.decay_mask(pure))
  assert mask.keys() == expected.keys()
  assert mask == expected
  # Sanity on the composition of the tree: both kinds are present in numbers.
  assert sum(expected.values()) >= 20
  assert sum(not v for v in expected.values()) >= 20
  # Every BatchNorm scale / bias and every bias is excluded.
  bn_leaves = 0
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      for name in ("scale", "bias"):
        key = tuple(path) + (name,)
        if key in mask:
          bn_leaves += 1
          assert mask[key] is False, key
  assert bn_leaves >= 20
  for key, value in mask.items():
    if key[-1] == "bias":
      assert value is False, key


def test_decay_mask_ignores_values():
  tree = {"a": {"kernel": np.ones(3), "bias": np.ones(3)}, "bn": {"scale": np.ones(3)}}
  assert optim.decay_mask(tree) == {"a": {"kernel": True, "bias": False},
                                    "bn": {"scale": False}}


def test_decay_mask_excludes_the_paths_matching_a_pattern():
  tree = {"encoder": {"conv": {"kernel": np.ones(3)}}, "probe": {"kernel": np.ones(3),
                                                                 "bias": np.ones(3)}}
  assert optim.decay_mask(tree, ("^probe/",)) == {
      "encoder": {"conv": {"kernel": True}}, "probe": {"kernel": False, "bias": False}}
  assert optim.decay_mask(tree)["probe"]["kernel"] is True


def test_lars_leaves_an_excluded_probe_undecayed_and_unscaled():
  """With '^probe/' excluded, the probe's kernel takes plain momentum steps (no weight
  decay, no trust ratio); the encoder's kernel still takes LARS's."""
  opt_config = default_config.get_config().optimizer
  opt_config.weight_decay = 0.5
  opt_config.momentum = 0.0
  params = {"encoder": {"kernel": np.full((4,), 2.0, np.float32)},
            "probe": {"kernel": np.full((4,), 2.0, np.float32)}}
  grads = {"encoder": {"kernel": np.full((4,), 0.1, np.float32)},
           "probe": {"kernel": np.full((4,), 0.1, np.float32)}}
  for patterns, probe_step in (((), None), (("^probe/",), 0.1)):
    opt_config.exclude_patterns = patterns
    tx = optim.create_optimizer(opt_config, lambda step: 1.0)
    updates, _ = tx.update(grads, tx.init(params), params)
    lars = 0.001 * 4.0 / (0.1 * 2 + 0.5 * 4.0) * (0.1 + 0.5 * 2.0)  # trust * (g + wd p).
    np.testing.assert_allclose(-updates["encoder"]["kernel"], lars, rtol=1e-5)
    expected_probe = lars if probe_step is None else probe_step
    np.testing.assert_allclose(-updates["probe"]["kernel"], expected_probe, rtol=1e-5)


@pytest.mark.parametrize("name", ["lars", "sgd"])
def test_learning_rate_multipliers_scale_their_groups_steps_and_nothing_else(name):
  """Over two momentum steps the predictor's updates are 10x those without multipliers (as
  10x its learning rate: the multiplier comes after the momentum and trust ratio), a path
  only the second pattern matches 3x (the first matching pair wins), the rest 1x."""
  opt_config = default_config.get_config().optimizer
  opt_config.name = name
  opt_config.weight_decay = 0.01
  rng = np.random.default_rng(0)
  params = {group: {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
                    "bias": rng.normal(size=(4,)).astype(np.float32)}
            for group in ("encoder", "predictor", "pred_head")}
  grads = [_random_like(params, seed) for seed in (1, 2)]

  def two_steps(multipliers):
    opt_config.learning_rate_multipliers = multipliers
    tx = optim.create_optimizer(opt_config, lambda step: 0.5)
    state, steps = tx.init(params), []
    for grad in grads:  # The same parameters at both steps: equal trust ratios and decay.
      updates, state = tx.update(grad, state, params)
      steps.append(updates)
    return steps

  plain = two_steps(())
  scaled = two_steps((("^predictor/", 10.0), ("^pred", 3.0)))
  for step_plain, step_scaled in zip(plain, scaled):
    for group, factor in (("encoder", 1.0), ("predictor", 10.0), ("pred_head", 3.0)):
      for leaf in ("kernel", "bias"):
        np.testing.assert_allclose(step_scaled[group][leaf], factor * step_plain[group][leaf],
                                   rtol=1e-5)
    assert np.abs(step_plain["predictor"]["kernel"]).min() > 0  # A real step to scale.


# ---------------------------------------------------------------------------------------
# LARS (the paper config).
# ---------------------------------------------------------------------------------------


def _lars_reference(params, grads_per_step, lr, wd, momentum, tc, mask):
  """NumPy LARS as optax.lars: decay, trust ratio, lr, then momentum trace."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  history = []
  for grads in grads_per_step:
    updates = {}
    for k in p:
      g = grads[k].astype(np.float64)
      if mask[k]:
        d = g + wd * p[k]
        w_norm, d_norm = np.linalg.norm(p[k]), np.linalg.norm(d)
        ratio = tc * w_norm / d_norm if (w_norm > 0 and d_norm > 0) else 1.0
        u = lr * ratio * d
      else:
        u = lr * g
      buf[k] = u + momentum * buf[k]
      updates[k] = -buf[k]
      p[k] = p[k] - buf[k]
    history.append(updates)
  return history


def _run_optax(tx, params, grads_per_step):
  state = tx.init(params)
  update = jax.jit(tx.update)
  history = []
  for grads in grads_per_step:
    updates, state = update(grads, state, params)
    history.append(jax.tree.map(np.asarray, updates))
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return history


@pytest.mark.parametrize("weight_decay", [None, 0.05])
def test_lars_first_and_second_step(model_params, weight_decay):
  _, pure, expected = model_params
  opt_config = default_config.get_config().optimizer
  assert opt_config.name == "lars" and opt_config.exclude_bn_and_bias
  if weight_decay is not None:  # Large enough for the decay term to be visible.
    opt_config.weight_decay = weight_decay
  lr = 0.7
  tx = optim.create_optimizer(opt_config, lambda step: lr)
  params = _random_like(pure, 0)
  grads = [_random_like(pure, 1), _random_like(pure, 2)]
  got = [_flat(u) for u in _run_optax(tx, params, grads)]
  want = _lars_reference(_flat(params), [_flat(g) for g in grads], lr,
                         opt_config.weight_decay, opt_config.momentum,
                         opt_config.trust_coefficient, expected)
  flat_params, g0 = _flat(params), _flat(grads[0])
  for key, is_kernel in expected.items():
    if not is_kernel:
      # First step: momentum trace starts at zero, no decay, no trust ratio.
      np.testing.assert_allclose(got[0][key], -lr * g0[key], rtol=1e-6, atol=1e-7,
                                 err_msg=str(key))
    else:
      d = g0[key] + opt_config.weight_decay * flat_params[key]
      ratio = opt_config.trust_coefficient * np.linalg.norm(flat_params[key]) / np.linalg.norm(d)
      np.testing.assert_allclose(got[0][key], -lr * ratio * d, rtol=1e-5,
                                 atol=1e-6 * np.abs(lr * ratio * d).max(), err_msg=str(key))
      # The trust ratio really rescales kernels (not a plain SGD step).
      assert not np.allclose(got[0][key], -lr * g0[key], rtol=1e-2)
    for step in range(2):
      np.testing.assert_allclose(got[step][key], want[step][key], rtol=1e-5,
                                 atol=2e-6 * np.abs(want[step][key]).max(),
                                 err_msg=f"{key} step {step}")


def test_lars_without_exclusion_rescales_every_param(model_params):
  _, pure, expected = model_params
  opt_config = default_config.get_config().optimizer
  opt_config.exclude_bn_and_bias = False
  opt_config.weight_decay = 0.05
  tx = optim.create_optimizer(opt_config, lambda step: 0.3)
  params = _random_like(pure, 3)
  grads = [_random_like(pure, 4)]
  got = _flat(_run_optax(tx, params, grads)[0])
  want = _lars_reference(_flat(params), [_flat(grads[0])], 0.3, 0.05, 0.9,
                         opt_config.trust_coefficient, {k: True for k in expected})[0]
  for key in expected:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5,
                               atol=1e-6 * np.abs(want[key]).max(), err_msg=str(key))


# ---------------------------------------------------------------------------------------
# SGD (the seed config): torch.optim.SGD with coupled weight decay on every parameter.
# ---------------------------------------------------------------------------------------


def _torch_sgd_reference(params, grads_per_step, lrs, wd, momentum, mask=None):
  p = {k: v.astype(np.float64) for k, v in params.items()}
  buf = {}
  history = []
  for grads, lr in zip(grads_per_step, lrs):
    updates = {}
    for k in p:
      g = grads[k].astype(np.float64)
      if mask is None or mask[k]:
        g = g + wd * p[k]
      buf[k] = g if k not in buf else momentum * buf[k] + g
      updates[k] = -lr * buf[k]
      p[k] = p[k] - lr * buf[k]
    history.append(updates)
  return history, p


def _torch_cosine_annealing(base_lr, t_max, epoch):
  return base_lr * (1 + math.cos(math.pi * epoch / t_max)) / 2


def test_sgd_matches_torch_sgd_over_three_steps(model_params):
  _, pure, _ = model_params
  config = food101_seed.get_config()
  opt_config = config.optimizer
  assert opt_config.name == "sgd" and not opt_config.exclude_bn_and_bias
  # One step per epoch, so the per-epoch cosine moves every step.
  schedule = optim.learning_rate_schedule(opt_config, config.batch_size, steps_per_epoch=1,
                                          num_train_steps=100)
  tx = optim.create_optimizer(opt_config, schedule)
  params = _random_like(pure, 5)
  grads = [_random_like(pure, 6 + i) for i in range(3)]
  got = _run_optax(tx, params, grads)
  lrs = [_torch_cosine_annealing(0.03, 100, e) for e in range(3)]
  assert lrs[1] < lrs[0]
  want, _ = _torch_sgd_reference(_flat(params), [_flat(g) for g in grads], lrs,
                                 opt_config.weight_decay, opt_config.momentum)
  for step in range(3):
    flat = _flat(got[step])
    assert flat.keys() == want[step].keys()
    for key, value in want[step].items():
      np.testing.assert_allclose(flat[key], value, rtol=2e-5, atol=1e-8,
                                 err_msg=f"{key} step {step}")


def test_sgd_weight_decay_reaches_biases_and_batchnorm(model_params):
  # With zero gradients, the only update is decay: every parameter moves by -lr*wd*p.
  _, pure, expected = model_params
  opt_config = food101_seed.get_config().optimizer
  tx = optim.create_optimizer(opt_config, lambda step: 0.03)
  params = _random_like(pure, 9)
  zeros = jax.tree.map(np.zeros_like, params)
  got = _flat(_run_optax(tx, params, [zeros])[0])
  for key, p in _flat(params).items():
    np.testing.assert_allclose(got[key], -0.03 * 1e-4 * p, rtol=1e-5, err_msg=str(key))
  assert any(not v for v in expected.values())


def test_sgd_with_exclusion_decays_kernels_only(model_params):
  _, pure, expected = model_params
  opt_config = food101_seed.get_config().optimizer
  opt_config.exclude_bn_and_bias = True
  opt_config.weight_decay = 0.1
  tx = optim.create_optimizer(opt_config, lambda step: 0.5)
  params = _random_like(pure, 10)
  grads = [_random_like(pure, 11 + i) for i in range(2)]
  got = _run_optax(tx, params, grads)
  want, _ = _torch_sgd_reference(_flat(params), [_flat(g) for g in grads], [0.5, 0.5], 0.1,
                                 0.9, mask=expected)
  for step in range(2):
    flat = _flat(got[step])
    for key, value in want[step].items():
      np.testing.assert_allclose(flat[key], value, rtol=2e-5, atol=1e-7,
                                 err_msg=f"{key} step {step}")


def test_unknown_optimizer_raises():
  opt_config = default_config.get_config().optimizer
  opt_config.name = "adam"
  with pytest.raises(ValueError):
    optim.create_optimizer(opt_config, lambda step: 0.1)


# ---------------------------------------------------------------------------------------
# Learning-rate schedules.
# ---------------------------------------------------------------------------------------


def test_seed_schedule_is_per_epoch_cosine():
  config = food101_seed.get_config()
  schedule = optim.learning_rate_schedule(config.optimizer, config.batch_size,
                                          steps_per_epoch=7, num_train_steps=700)
  for epoch in (0, 1, 50, 99):
    want = 0.03 * (1 + math.cos(math.pi * epoch / 100)) / 2
    for step in range(7 * epoch, 7 * epoch + 7):
      np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-6, atol=1e-8,
                                 err_msg=f"step {step}")
      np.testing.assert_allclose(float(schedule(jnp.asarray(step))), want, rtol=1e-6,
                                 atol=1e-8)
  assert float(schedule(0)) == pytest.approx(0.03)
  assert float(schedule(7)) < float(schedule(6))


def test_paper_schedule_warmup_then_cosine():
  config = default_config.get_config()
  batch, steps_per_epoch, total = 512, 7, 700
  schedule = optim.learning_rate_schedule(config.optimizer, batch, steps_per_epoch, total)
  peak = 0.075 * math.sqrt(batch)
  warmup = 10 * steps_per_epoch
  assert float(schedule(0)) == pytest.approx(0.0, abs=1e-9)
  for step in (1, 17, 35, 69):
    np.testing.assert_allclose(float(schedule(step)), peak * step / warmup, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(warmup)), peak, rtol=1e-6)
  values = np.array([float(schedule(s)) for s in range(warmup, total + 1, 7)])
  assert np.all(np.diff(values) < 0)
  for step in (100, 385, 650):
    want = peak * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2
    np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-5)
  assert float(schedule(total)) == pytest.approx(0.0, abs=1e-6 * peak)
  assert float(schedule(total - 1)) < 1e-3 * peak


def test_scaled_learning_rate_rules():
  opt_config = default_config.get_config().optimizer
  opt_config.base_learning_rate = 0.3
  opt_config.lr_scaling = "linear"
  assert optim.scaled_learning_rate(opt_config, 4096) == pytest.approx(0.3 * 4096 / 256)
  assert optim.scaled_learning_rate(opt_config, 64) == pytest.approx(0.3 * 64 / 256)
  opt_config.lr_scaling = "sqrt"
  assert optim.scaled_learning_rate(opt_config, 4096) == pytest.approx(0.3 * 64)
  opt_config.lr_scaling = "none"
  assert optim.scaled_learning_rate(opt_config, 4096) == pytest.approx(0.3)


@pytest.mark.parametrize("rule", ["Linear", "log", ""])
def test_unknown_lr_scaling_raises(rule):
  opt_config = default_config.get_config().optimizer
  opt_config.lr_scaling = rule
  with pytest.raises(ValueError):
    optim.scaled_learning_rate(opt_config, 256)
  with pytest.raises(ValueError):
    optim.learning_rate_schedule(opt_config, 256, 10, 100)


def test_unknown_schedule_unit_raises():
  opt_config = default_config.get_config().optimizer
  opt_config.schedule_unit = "batch"
  with pytest.raises(ValueError):
    optim.learning_rate_schedule(opt_config, 256, 10, 100)


@pytest.mark.parametrize("field, value", [("name", "adam"), ("lr_scaling", "cube"),
                                          ("schedule_unit", "minute")])
@pytest.mark.parametrize("block", ["optimizer", "finetune.optimizer"])
def test_one_optimiser_check_names_the_block_and_the_choices(block, field, value):
  """Pretraining's and fine-tuning's optimiser blocks go through the one check."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from simclr_jax import config_checks  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  opt_config = config.optimizer if block == "optimizer" else config.finetune.optimizer
  optim.check_config(block, opt_config)
  opt_config[field] = value
  with pytest.raises(config_checks.ConfigError, match=rf"{block}\.{field} must be one of .* "
                                                      rf"got '{value}'"):
    optim.check_config(block, opt_config)
