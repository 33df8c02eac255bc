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


# ---------------------------------------------------------------------------------------
# A ViT-shaped parameter tree: a fake backbone family with layers (not the project's ViT).
# ---------------------------------------------------------------------------------------


class _Block(nnx.Module):
  """Pre-norm block with the names a ViT's parameters have (timm's, as paths)."""

  def __init__(self, width: int, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(width, rngs=rngs)
    self.attn = nnx.Dict(qkv=nnx.Linear(width, 3 * width, rngs=rngs),
                         proj=nnx.Linear(width, width, rngs=rngs))
    self.norm2 = nnx.LayerNorm(width, rngs=rngs)
    self.mlp = nnx.Dict(fc1=nnx.Linear(width, 2 * width, rngs=rngs),
                        fc2=nnx.Linear(2 * width, width, rngs=rngs))

  def __call__(self, x):
    x = x + self.attn["proj"](self.attn["qkv"](self.norm1(x))[..., :x.shape[-1]])
    return x + self.mlp["fc2"](nnx.gelu(self.mlp["fc1"](self.norm2(x))))


class _ToyViT(nnx.Module):
  """(B, H, W, 3) -> (B, width): 4x4 patches, class token, learned position embedding,
  `depth` blocks, final norm; enough of a ViT for the optimiser's masks and layer ids."""

  def __init__(self, depth: int, rngs: nnx.Rngs, width: int = 8):
    self.patch_embed = nnx.Conv(3, width, (4, 4), strides=(4, 4), rngs=rngs)
    self.cls_token = nnx.Param(jnp.zeros((1, 1, width)))
    self.pos_embed = nnx.Param(jnp.zeros((1, 5, width)))
    self.blocks = nnx.List([_Block(width, rngs) for _ in range(depth)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.num_features = width

  def __call__(self, images, train: bool = True, rngs=None):
    del train, rngs
    x = jax.image.resize(images, (images.shape[0], 8, 8, 3), "linear")
    x = self.patch_embed(x).reshape(images.shape[0], 4, -1)
    x = jnp.concatenate([jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1])),
                         x], 1) + self.pos_embed[...]
    for block in self.blocks:
      x = block(x)
    return self.norm(x)[:, 0].astype(jnp.float32)


class _ToyViTFamily:
  """A backbone family (backbones/contract.py) with the optional layer functions."""

  @staticmethod
  def create(model_config, rngs, dtype=jnp.float32, conv_algorithm="xla"):
    del dtype, conv_algorithm
    return _ToyViT(model_config.depth, rngs)

  @staticmethod
  def check_config(config):
    del config

  @staticmethod
  def describe(model_config):
    return f"toy_vit depth {model_config.depth}"

  @staticmethod
  def num_layers(model_config):
    return model_config.depth + 1  # MAE's num_layers: the last layer's id.

  @staticmethod
  def layer_of(model_config, path):
    first = path.split("/")[0]
    if first in ("patch_embed", "cls_token", "pos_embed"):
      return 0
    if first == "blocks":
      return int(path.split("/")[1]) + 1
    return model_config.depth + 1


@pytest.fixture
def toy_vit_config(monkeypatch):
  """A tiny config on the fake ViT family (registered for this test only), depth 3."""
  from simclr_jax import backbones  # pylint: disable=g-import-not-at-top
  from tests.support import helpers  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(backbones.BACKBONES, "toy_vit", _ToyViTFamily)
  config = helpers.tiny_food101_config()
  config.model = {"name": "toy_vit", "depth": 3}
  return config


def _vit_params(depth=2):
  """The pure parameter dict of a _ToyViT (shapes only) and the set of the paths of its
  nnx.Conv / nnx.Linear kernels, found by module type."""
  model = nnx.eval_shape(lambda: _ToyViT(depth, nnx.Rngs(0)))
  kernels = {tuple(path) + ("kernel",) for path, node in nnx.iter_graph(model)
             if isinstance(node, (nnx.Conv, nnx.Linear))}
  return nnx.to_pure_dict(nnx.state(model, nnx.Param)), kernels


def test_decay_mask_of_a_vit_decays_kernels_only():
  """LayerNorm scales and biases, every bias, the position embedding and the class token
  take no weight decay; the patch embedding's and every Linear's kernel do."""
  pure, kernels = _vit_params()
  mask = _flat(optim.decay_mask({"encoder": pure}))
  assert {k[1:] for k, v in mask.items() if v} == kernels
  assert len(kernels) == 1 + 2 * 4
  for name in (("cls_token",), ("pos_embed",), ("norm", "scale"), ("norm", "bias"),
               ("blocks", 1, "norm2", "scale"), ("blocks", 0, "attn", "qkv", "bias")):
    assert mask[("encoder",) + name] is False, name


# ---------------------------------------------------------------------------------------
# AdamW.
# ---------------------------------------------------------------------------------------


def _torch_adamw_reference(params, grads_per_step, lrs, betas, eps, wd, mask):
  """NumPy torch.optim.AdamW: decoupled decay p *= 1 - lr wd, bias-corrected moments."""
  b1, b2 = betas
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  history = []
  for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
    updates = {}
    for k in p:
      g = grads[k].astype(np.float64)
      new = p[k] * (1 - lr * wd) if mask[k] else p[k].copy()
      m[k] = b1 * m[k] + (1 - b1) * g
      v2[k] = b2 * v2[k] + (1 - b2) * g * g
      m_hat, v_hat = m[k] / (1 - b1 ** t), v2[k] / (1 - b2 ** t)
      new = new - lr * m_hat / (np.sqrt(v_hat) + eps)
      updates[k], p[k] = new - p[k], new
    history.append(updates)
  return history


@pytest.mark.parametrize("exclude_bn_and_bias", [True, False], ids=["kernels", "everything"])
def test_adamw_matches_torch_adamw_over_three_steps(exclude_bn_and_bias):
  """Three steps at a changing rate on a ViT-shaped tree: decoupled decay on the kernels
  (or on everything, MoCo v3's), bias-corrected moments, non-default betas and epsilon."""
  pure, _ = _vit_params()
  params = {"encoder": _random_like(pure, 20)}
  opt_config = default_config.get_config().optimizer
  opt_config.update(name="adamw", weight_decay=0.3, adam_betas=(0.8, 0.99), adam_epsilon=1e-3,
                    exclude_bn_and_bias=exclude_bn_and_bias)
  lrs = [0.05, 0.03, 0.01]
  tx = optim.create_optimizer(opt_config, lambda count: 0.05 - 0.02 * count)
  grads = [_random_like(params, 21 + i) for i in range(3)]
  got = _run_optax(tx, params, grads)
  mask = {k: (k[-1] == "kernel") if exclude_bn_and_bias else True for k in _flat(params)}
  want = _torch_adamw_reference(_flat(params), [_flat(g) for g in grads], lrs, (0.8, 0.99),
                                1e-3, 0.3, mask)
  for step in range(3):
    flat = _flat(got[step])
    assert flat.keys() == want[step].keys()
    for key, value in want[step].items():
      np.testing.assert_allclose(flat[key], value, rtol=2e-5, atol=1e-7,
                                 err_msg=f"{key} step {step}")
  # The decay is visible: a decayed leaf's step differs from the undecayed Adam step.
  undecayed = _torch_adamw_reference(_flat(params), [_flat(grads[0])], lrs, (0.8, 0.99), 1e-3,
                                     0.0, mask)[0]
  key = ("encoder", "pos_embed")
  assert np.allclose(want[0][key], undecayed[key]) != (not exclude_bn_and_bias)


# ---------------------------------------------------------------------------------------
# Gradient clipping, frozen parameters.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [0.5, 1e3])
def test_gradient_clipping_to_the_global_norm_of_the_trainable_parameters(clip):
  """SGD at rate 1 without momentum or decay: the update is -g scaled to at most `clip` in
  global norm, the norm over the trainable parameters (a frozen one's gradient, huge here,
  is no part of it, as a requires_grad=False parameter's in torch's clip_grad_norm_)."""
  opt_config = default_config.get_config().optimizer
  opt_config.update(name="sgd", momentum=0.0, weight_decay=0.0, gradient_clip_norm=clip)
  params = {"a": {"kernel": np.ones((3, 4), np.float32)}, "b": {"bias": np.ones(5, np.float32)},
            "frozen": {"kernel": np.ones((2, 2), np.float32)}}
  grads = _random_like(params, 30)
  grads["frozen"]["kernel"] = np.full((2, 2), 1e4, np.float32)
  norm = np.sqrt(sum(np.sum(np.square(grads[k][n].astype(np.float64)))
                     for k, n in (("a", "kernel"), ("b", "bias"))))
  assert 0.5 < norm < 1e3
  for frozen in ((), ("^frozen/",)):
    opt_config.frozen_patterns = frozen
    updates = _flat(_run_optax(optim.create_optimizer(opt_config, lambda count: 1.0), params,
                               [grads])[0])
    scale = min(1.0, clip / norm) if frozen else min(1.0, clip / np.sqrt(norm ** 2 + 4e8))
    for key, grad in _flat(grads).items():
      want = np.zeros_like(grad) if frozen and key[0] == "frozen" else -scale * grad
      np.testing.assert_allclose(updates[key], want, rtol=1e-5, err_msg=str(key))


def test_a_frozen_parameter_stays_bit_identical_through_real_adamw_steps(tmp_path):
  """MoCo v3 (target network, online probe) on the toy backbone, AdamW decaying every
  parameter, clipping on: three real pretraining steps on 8 devices move every parameter but
  the frozen encoder layer, which stays bit for bit, has no optimiser state, and comes back
  from a checkpoint so."""
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top

  from simclr_jax import sharding  # pylint: disable=g-import-not-at-top
  from simclr_jax.training import checkpoints, pretrain_step  # pylint: disable=g-import-not-at-top
  from simclr_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from tests.support import helpers  # pylint: disable=g-import-not-at-top
  config = helpers.tiny_method_config("mocov3", online_probe=True)
  config.optimizer.update(name="adamw", base_learning_rate=0.01, lr_scaling="none",
                          weight_decay=0.5, exclude_bn_and_bias=False, warmup_epochs=0.0,
                          gradient_clip_norm=1.0, frozen_patterns=("^encoder/hidden/",))
  mesh = sharding.create_mesh()
  tx, schedule = state_lib.create_optimizer(config, 10, 100)
  state = state_lib.init_train_state(config, tx, mesh, num_probe_classes=101)
  initial = jax.device_get(state)
  step = pretrain_step.compile_train_step(config, model_lib.model_graphdef(config, 101), tx,
                                          schedule, mesh, num_train_steps=100)
  rng = np.random.default_rng(0)
  for _ in range(3):
    batch = {"views": rng.integers(0, 256, (16, 2, 16, 16, 3), dtype=np.uint8),
             "label": rng.integers(0, 101, (16,), dtype=np.int32)}
    state, metrics = step(state, jax.device_put(batch, NamedSharding(mesh, P("data"))))
    assert int(metrics["fault"]) == 0
  final = jax.device_get(state)
  before, after = _flat(initial.params), _flat(final.params)
  frozen = ("encoder", "hidden", "kernel")
  assert after[frozen].tobytes() == before[frozen].tobytes()
  for key in before.keys() - {frozen}:
    assert not np.array_equal(after[key], before[key]), key
  # No moments for it: AdamW's state holds two arrays per trainable parameter only.
  state_sizes = sorted(x.size for x in jax.tree.leaves(final.opt_state) if x.size > 1)
  trainable = sorted(2 * [x.size for k, x in before.items() if k != frozen])
  assert state_sizes == sorted(x for x in trainable if x > 1)
  with checkpoints.create_manager(tmp_path) as manager:
    checkpoints.save(manager, 3, final.checkpoint_items(), config)
    manager.wait_until_finished()
    _, items = checkpoints.restore(manager, initial.checkpoint_items(), config)
  restored = state_lib.TrainState.from_checkpoint_items(items)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(final)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_frozen_pattern_that_matches_nothing_is_a_config_error():
  from simclr_jax import config_checks  # pylint: disable=g-import-not-at-top
  opt_config = default_config.get_config().optimizer
  opt_config.frozen_patterns = ("^encoder/patch_embd/",)
  tx = optim.create_optimizer(opt_config, lambda count: 0.1)
  with pytest.raises(config_checks.ConfigError,
                     match=r"frozen_patterns: '\^encoder/patch_embd/' matches no parameter; "
                           r"the paths look like \['encoder/patch_embed/kernel'\]"):
    tx.init({"encoder": {"patch_embed": {"kernel": np.ones(2, np.float32)}}})


# ---------------------------------------------------------------------------------------
# Layer-wise learning-rate decay (fine-tuning).
# ---------------------------------------------------------------------------------------


def _mae_layer_scale(name: str, depth: int, decay: float) -> float:
  """MAE's util/lr_decay.py on a PyTorch parameter name: get_layer_id_for_vit (lines
  64-76) and layer_scales (lines 23-25), written out again."""
  num_layers = depth + 1
  if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
    layer_id = 0
  elif name.startswith("blocks"):
    layer_id = int(name.split(".")[1]) + 1
  else:
    layer_id = num_layers
  return [decay ** (num_layers - i) for i in range(num_layers + 1)][layer_id]


@pytest.mark.parametrize("backbone, depth", [("toy_vit", 3), ("vit", 4)])
@pytest.mark.parametrize("from_head_layer", [False, True])
def test_layer_decay_scales_each_layers_rate_as_mae(toy_vit_config, from_head_layer, backbone,
                                                    depth):
  """The fine-tuning stage's optimiser on its classifier model (encoder, head layer,
  classifier): with SGD at rate 1 and no momentum or decay, each parameter's update is
  -g x MAE's lr_scale of its PyTorch name (the head layer and classifier: 'head'). On the
  toy family and on the real ViT ('mu': 4 blocks; learned table and class token, so that
  every layer-0 parameter is there)."""
  from simclr_jax.stages import finetune  # pylint: disable=g-import-not-at-top
  from tests.support import helpers  # pylint: disable=g-import-not-at-top
  config = toy_vit_config
  if backbone == "vit":
    helpers.on_tiny_vit(config).model.vit.position_embedding = "learned"
  config.finetune.from_head_layer = from_head_layer
  config.finetune.optimizer.update(name="sgd", momentum=0.0, weight_decay=0.0,
                                   layer_decay=0.65)
  finetune.check_settings(config)
  tx = optim.create_optimizer(config.finetune.optimizer, lambda count: 1.0,
                              finetune.classifier_layers(config))
  model = nnx.eval_shape(lambda: finetune.build_classifier(config, 5, nnx.Rngs(0)))
  params = _random_like(nnx.to_pure_dict(nnx.state(model, nnx.Param)), 40)
  grads = _random_like(params, 41)
  updates = _flat(_run_optax(tx, params, [grads])[0])
  scales = set()
  for key, grad in _flat(grads).items():
    name = ("head." if key[0] != "encoder" else "") + ".".join(str(k) for k in key[1:])
    scale = _mae_layer_scale(name, depth=depth, decay=0.65)
    scales.add(round(scale, 6))
    np.testing.assert_allclose(updates[key], -scale * grad, rtol=1e-6, err_msg=str(key))
  assert ("head_linear" in params) == from_head_layer
  assert {"patch_embed", "cls_token", "pos_embed", "blocks", "norm"} <= set(params["encoder"])
  assert len(scales) == depth + 2  # Embeddings, the blocks, the rest: 0.65^(depth+1) .. 1.
  assert min(scales) == pytest.approx(0.65 ** (depth + 1), rel=1e-5)


def test_layer_decay_needs_a_backbone_with_layers(toy_vit_config):
  from simclr_jax import config_checks  # pylint: disable=g-import-not-at-top
  from simclr_jax.stages import finetune  # pylint: disable=g-import-not-at-top
  from tests.support import helpers  # pylint: disable=g-import-not-at-top
  config = helpers.tiny_food101_config()
  config.finetune.optimizer.layer_decay = 0.75
  with pytest.raises(config_checks.ConfigError,
                     match=r"^finetune.optimizer.layer_decay needs a backbone with layers "
                           r"\(toy_vit, vit\); 'toy_mlp' has none: set it to 1.$"):
    finetune.check_settings(config)
  config.finetune.optimizer.layer_decay = 1.0
  finetune.check_settings(config)
  assert finetune.classifier_layers(config) is None
  toy_vit_config.finetune.optimizer.layer_decay = 0.75
  finetune.check_settings(toy_vit_config)


# ---------------------------------------------------------------------------------------
# The new fields' checks.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("adam_betas", (0.9, 1.0), r"adam_betas must be two numbers in \[0, 1\), e.g. "
                               r"\(0.9, 0.999\), got \(0.9, 1.0\)"),
    ("adam_betas", (-0.1, 0.999), r"adam_betas must be two numbers in \[0, 1\)"),
    ("adam_epsilon", 0.0, r"adam_epsilon must be > 0, got 0.0"),
    ("gradient_clip_norm", -1.0, r"gradient_clip_norm must be >= 0 \(0 = no clipping\), "
                                 r"got -1.0"),
    ("layer_decay", 0.0, r"layer_decay must be in \(0, 1\] \(1 = off; MAE: 0.65 for ViT-B\), "
                         r"got 0.0"),
    ("layer_decay", 1.5, r"layer_decay must be in \(0, 1\]"),
    ("frozen_patterns", ("^encoder/(",), r"frozen_patterns: '\^encoder/\(' is not a regex"),
    ("exclude_patterns", ("[",), r"exclude_patterns: '\[' is not a regex"),
])
def test_the_optimiser_options_are_checked(field, value, message):
  from configs import default  # pylint: disable=g-import-not-at-top
  from simclr_jax import config_checks  # pylint: disable=g-import-not-at-top
  block = default.get_config().finetune.optimizer
  block.name = "adamw"
  optim.check_config("finetune.optimizer", block)
  block[field] = value
  with pytest.raises(config_checks.ConfigError, match=rf"^finetune\.optimizer\.{message}"):
    optim.check_config("finetune.optimizer", block)
