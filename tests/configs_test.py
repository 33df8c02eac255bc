"""Every shipped config is valid; the seed config is the seed document's run exactly."""

import glob
import importlib
import os

import pytest

from simclr_jax import config_checks
from simclr_jax.data.augmentations import settings
from simclr_jax.stages import finetune, linear_eval, pretrain
from simclr_jax.training import model as model_lib
from tests.support import paths

# Every file of configs/ with a get_config (the others hold blocks and presets they use).
CONFIGS = sorted(
    name for name in (os.path.basename(p)[:-3] for p in glob.glob(
        str(paths.REPO / "configs" / "*.py")))
    if hasattr(importlib.import_module(f"configs.{name}"), "get_config"))


def test_the_full_configs_are_found():
  assert {"default", "demo", "food101", "food101_seed"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  pretrain.check_config(config)
  linear_eval.check_config(config)
  model_lib.check_model_config(config)
  finetune.check_config(config)


def test_seed_config_matches_the_seed_document():
  from configs import food101_seed  # pylint: disable=g-import-not-at-top
  c = food101_seed.get_config()
  assert (c.augment.image_size, c.batch_size, c.simclr.temperature, c.num_epochs) == (256, 64, 0.5, 100)
  assert (c.optimizer.name, c.optimizer.base_learning_rate, c.optimizer.lr_scaling) == (
      "sgd", 0.03, "none")
  assert (c.optimizer.momentum, c.optimizer.weight_decay) == (0.9, 1e-4)
  assert not c.optimizer.exclude_bn_and_bias  # torch.optim.SGD decays every parameter.
  assert (c.optimizer.schedule_unit, c.optimizer.warmup_epochs) == ("epoch", 0.0)
  assert tuple(c.simclr.head_widths) == (512, 128) and not c.simclr.head_batch_norm
  assert c.model.depth == 50 and c.simclr.forward_views_separately
  # ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale p = 0.2, flip p = 0.5.
  s = c.augment.color_jitter_strength
  assert (0.8 * s, 0.2 * s) == (0.4, 0.1) and c.augment.color_jitter_probability == 0.8
  assert (c.augment.grayscale_probability, c.augment.flip_probability) == (0.2, 0.5)
  assert tuple(c.augment.crop_area_range) == (0.08, 1.0)
  assert c.augment.blur_probability == 1.0 and tuple(c.augment.blur_sigma_range) == (0.1, 2.0)
  assert settings.blur_kernel_size(c.augment.image_size) == 25
  assert c.augment.normalize


def test_paper_config_uses_lars_sqrt_scaling_and_the_three_layer_head():
  from configs import food101  # pylint: disable=g-import-not-at-top
  c = food101.get_config()
  assert (c.optimizer.name, c.optimizer.lr_scaling) == ("lars", "sqrt")
  assert c.optimizer.exclude_bn_and_bias and c.augment.blur_probability == 0.5
  assert len(c.simclr.head_widths) == 3 and c.simclr.head_batch_norm


@pytest.mark.parametrize("field", ["weight_decay", "few_shot_weight_decay"])
def test_negative_probe_weight_decay_is_a_config_error(field):
  config = importlib.import_module("configs.food101_linear").get_config()
  config.linear_eval[field] = -0.1
  with pytest.raises(config_checks.ConfigError, match=f"linear_eval.{field} must be >= 0"):
    linear_eval.check_config(config)


@pytest.mark.parametrize("multipliers, message", [
    ((("^predictor/", -1.0),), "must hold \\(regex, factor >= 0\\) pairs"),
    (("^predictor/",), "must hold \\(regex, factor >= 0\\) pairs"),
    ((("predictor[", 10.0),), "'predictor\\[' is not a regex"),
])
def test_bad_learning_rate_multipliers_are_config_errors(multipliers, message):
  config = importlib.import_module("configs.demo").get_config("byol")
  config.optimizer.learning_rate_multipliers = multipliers
  with pytest.raises(config_checks.ConfigError, match="optimizer.learning_rate_multipliers"):
    pretrain.check_config(config)
  with pytest.raises(config_checks.ConfigError, match=message):
    pretrain.check_config(config)
  config.optimizer.learning_rate_multipliers = (("^predictor/", 10.0),)
  pretrain.check_config(config)


@pytest.mark.parametrize("method", ["simclr", "byol", "mocov3", "vicreg"])
def test_demo_config_takes_the_method_and_the_validation_split(method):
  from configs import demo  # pylint: disable=g-import-not-at-top
  config = demo.get_config(method)
  assert config.method == method and config.eval_split == "test"
  model_lib.check_model_config(config)
  validation = demo.get_config(f"{method},validation")
  assert (validation.train_split, validation.eval_split) == ("train_without_validation",
                                                            "validation")
  assert demo.get_config().method == "simclr"


@pytest.mark.parametrize("name,method", [("food101_byol", "byol"), ("food101_mocov3", "mocov3"),
                                         ("food101_vicreg", "vicreg")])
def test_method_configs_use_their_recipe(name, method):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.method == method and config.compute_dtype == "bfloat16"
  assert config.optimizer.name == "lars" and config.optimizer.lr_scaling == "linear"
  assert config.augment.view1.blur_probability == 1.0
  assert config.augment.view2.solarize_probability == 0.2
  assert tuple(config.augment.color_jitter) == (0.4, 0.4, 0.2, 0.1)


@pytest.mark.parametrize("arg, method, fraction, epochs", [
    (None, "simclr", 0.1, 30), ("1pct", "simclr", 0.01, 60), ("byol,10pct", "byol", 0.1, 30),
    ("vicreg,1pct", "vicreg", 0.01, 60), ("mocov3,100pct", "mocov3", 1.0, 30)])
def test_finetune_config_carries_simclr_v2_s_protocols_on_the_method_s_encoder(
    arg, method, fraction, epochs):
  from configs import food101_finetune  # pylint: disable=g-import-not-at-top
  config = food101_finetune.get_config(arg)
  pretraining = importlib.import_module(
      "configs.food101" + ("" if method == "simclr" else f"_{method}")).get_config()
  assert config.method == method
  # The encoder and heads of the method's pretraining config, so its checkpoints restore.
  def value(cfg, field):
    for key in field.rstrip(".").split("."):
      cfg = cfg[key]
    return cfg

  for field in model_lib.model_fields(pretraining):
    assert value(config, field) == value(pretraining, field), field
  block = config.finetune
  assert (block.label_fraction, block.epochs) == (fraction, epochs)
  # SimCLR v2: from the head's first layer with 1% and 10% of the labels, its input with all.
  assert block.from_head_layer == (fraction < 1) and block.optimizer.name == "lars"
  assert block.optimizer.base_learning_rate * 1024**0.5 == pytest.approx(0.16)
  assert block.optimizer.weight_decay == 0 and block.optimizer.warmup_epochs == 0
  finetune.check_config(config)


def test_finetune_config_rejects_an_unknown_protocol():
  from configs import food101_finetune  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="PROTOCOL: 1pct, 10pct \\(default\\), 100pct"):
    food101_finetune.get_config("5pct")


@pytest.mark.parametrize("method", ["simclr", "byol", "mocov3", "vicreg"])
def test_folder_config_takes_the_method_s_recipe(method):
  from configs import folder  # pylint: disable=g-import-not-at-top
  config = folder.get_config(method)
  recipe = importlib.import_module(
      "configs.food101" + ("" if method == "simclr" else f"_{method}")).get_config()
  assert (config.method, config.dataset, config.eval_split) == (method, "folder", "test")
  assert config.batch_size == 256 and config.holdout_fraction == 0.0
  assert config.optimizer.base_learning_rate == recipe.optimizer.base_learning_rate
  assert config[method] == recipe[method]
  model_lib.check_model_config(config)
  pretrain.check_config(config)
  linear_eval.check_config(config)
  finetune.check_config(config)
