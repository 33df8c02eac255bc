"""The 'patches' convolutions equal XLA's convolution op: values and both gradients, per
layer and through a whole ResNet; the option is checked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import demo
from simclr_jax import backbones, config_checks
from simclr_jax.backbones import patch_conv

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("kernel, stride, size", [(1, 1, 9), (1, 2, 9), (3, 1, 9), (3, 2, 10),
                                                  (3, 2, 9), (7, 2, 11)])
def test_patches_equal_xla_convolution_and_its_gradients(kernel, stride, size):
  rng = np.random.default_rng(kernel * 10 + stride)
  x = jnp.asarray(rng.normal(size=(2, size, size, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 6)), jnp.float32)
  cotangent = None
  results = {}
  for name, conv in (("xla", jax.lax.conv_general_dilated),
                     ("patches", patch_conv.conv_general_dilated)):
    def apply(x, w, conv=conv):
      return conv(x, w, (stride, stride), [(kernel // 2, kernel // 2)] * 2,
                  dimension_numbers=DIMENSIONS)
    y, vjp = jax.vjp(apply, x, w)
    if cotangent is None:
      cotangent = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    results[name] = (y, *vjp(cotangent))
  for ours, reference in zip(results["patches"], results["xla"]):
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)


def test_other_convolutions_go_to_xla_unchanged():
  x = jnp.ones((1, 6, 6, 4))
  w = jnp.ones((3, 3, 2, 4))  # Two groups of two input channels.
  grouped = patch_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMENSIONS,
                                            feature_group_count=2)
  reference = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMENSIONS,
                                           feature_group_count=2)
  np.testing.assert_array_equal(grouped, reference)


@pytest.mark.slow  # 20 s (two ResNet compilations); each convolution's own check is above.
def test_a_resnet_computes_the_same_with_either_algorithm():
  """Same parameters (the option changes none), the same features and gradients."""
  config = demo.get_config()
  config.model.width_multiplier = 0.0625
  models = {}
  for algorithm in ("xla", "patches"):
    config.conv_algorithm = algorithm
    models[algorithm] = backbones.create(config, nnx.Rngs(0))
  params = {name: nnx.state(model, nnx.Param) for name, model in models.items()}
  jax.tree.map(np.testing.assert_array_equal, params["xla"], params["patches"])
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 16, 16, 3)), jnp.float32)

  def loss(model):
    return jnp.sum(model(images, train=True) ** 2)

  values = {name: nnx.value_and_grad(loss)(model) for name, model in models.items()}
  np.testing.assert_allclose(values["patches"][0], values["xla"][0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4),
               nnx.to_pure_dict(values["patches"][1]), nnx.to_pure_dict(values["xla"][1]))


def test_an_unknown_algorithm_is_a_config_error():
  config = demo.get_config()
  config.conv_algorithm = "winograd"
  with pytest.raises(config_checks.ConfigError, match="conv_algorithm must be one of"):
    backbones.check_config(config)
