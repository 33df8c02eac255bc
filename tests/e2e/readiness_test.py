"""benchmarks/readiness.py: its checks pass on the project's step, fail where they must, and
its counts agree with XLA's and with the ResNet's layers counted by hand."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

from benchmarks import conv_breakdown, readiness
from configs import food101
from simclr_jax.training import model as model_lib
from tests.e2e.no_tensorflow_test import FINDABLE_BLOCKER
from tests.support import paths

ROOT = str(paths.REPO)


def _readiness(tmp_path, *args):
  """(exit status, {check: its JSON line}) of readiness.py run with TensorFlow, TFDS and
  CLU made unimportable (an accelerator image has none of them)."""
  (tmp_path / "sitecustomize.py").write_text(FINDABLE_BLOCKER)
  env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}",
         "XLA_FLAGS": "--xla_backend_optimization_level=0"}  # Tiny programs: compiling costs.
  out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "readiness.py"),
                        *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
                       check=False)
  lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert lines, out.stderr[-3000:]
  return out.returncode, {line["check"]: line for line in lines}


def test_lowered_resnet50_step_is_bf16_without_callbacks_at_the_analytic_flops(tmp_path):
  """food101.py's step, ResNet-50 at 224 px, lowered (seconds): 53 convolutions, each
  forward, weight gradient and input gradient but the stem's input: 158, all bf16; in
  float32 the same check fails."""
  status, checks = _readiness(tmp_path, "--checks=bf16,flops", "--batch_size=16")
  assert status == 0, checks
  bf16, flops = checks["bf16"], checks["flops"]
  assert bf16["ok"] and bf16["global_batch"] == 16 and bf16["image_size"] == 224
  assert bf16["convolutions"] == bf16["bf16_convolutions"] == 158
  assert bf16["host_callbacks"] == []
  assert flops["ok"] and flops["layers_match_params"]
  # The issue's figures: ResNet-50's 4.09 GMAC forward (conv_breakdown's count) and 24.3
  # GFLOP per view for a step; XLA counts the taps inside the image (23.5 of them).
  assert flops["textbook_encoder_forward_gmac"] == 4.0871
  assert abs(flops["textbook_gflop_per_view"] - 24.34) < 0.01
  assert abs(flops["xla_gflop_per_view"] / flops["analytic_gflop_per_view"] - 1) <= 0.05

  status, checks = _readiness(tmp_path, "--checks=bf16", "--batch_size=16",
                              "--config.compute_dtype=float32")
  assert status == 1 and not checks["bf16"]["ok"]
  assert checks["bf16"]["bf16_convolutions"] == 0
  assert checks["bf16"]["convolution_dtypes"] == {"f32,f32->f32": 158}


@pytest.mark.slow
def test_small_step_collectives_compile_once_and_cache(tmp_path):
  """The compiled checks on ResNet-18 at 1/16 width, 32 px, 8 devices (a minute: one CPU
  compile of the step, one of its initialisation, five steps and a checkpoint). By hand:
  BatchNorms 1 (stem) + 8 blocks x 2 + 3 projections + 3 in the head = 23; parameters 20
  convolution kernels + 3 dense kernels + 20 x 2 BatchNorm scales and biases + the head's
  2 + 2 + 1 (its last BatchNorm has a scale only) = 68."""
  status, checks = _readiness(tmp_path, "--checks=collectives,compile_cache,no_recompile")
  assert status == 0, checks
  collectives = checks["collectives"]
  assert collectives["ok"] and collectives["devices"] == 8
  assert collectives["batch_norms"] == 23 and collectives["parameters"] == 68
  # Forward: each BatchNorm's mean and mean of squares. Backward: each parameter's
  # gradient, and one more batch sum per BatchNorm (each has a scale). The loss: its value
  # and accuracy, and both views' (16, 128) embeddings gathered, their gradients scattered.
  assert collectives["arrays"] == {"all-gather": 2, "reduce-scatter": 2,
                                   "all-reduce forward": 2 * 23,
                                   "all-reduce backward": 68 + 23, "all-reduce loss": 2,
                                   "all-reduce scalars": 0}
  assert collectives["loss_gathers"] == [[16, 128], [16, 128]]
  cache = checks["compile_cache"]
  assert cache["ok"] and cache["cold_missed"] and cache["warm_loaded"]
  assert cache["warm_compile_s"] < cache["cold_compile_s"]
  recompile = checks["no_recompile"]
  assert recompile["ok"] and recompile["steps"] == 5 and recompile["restored_step"] == 3
  assert recompile["traces"] == recompile["compiles"] == 1
  assert recompile["compiles_after_each_step"] == [1] * 5


@pytest.mark.parametrize("make_callback", [
    lambda x: jax.debug.print("{}", x) or x,
    lambda x: jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x),
    lambda x: io_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x),
])
def test_host_callbacks_finds_each_kind_of_callback(make_callback):
  text = jax.jit(lambda x: make_callback(x) * 2).lower(jnp.ones(3)).as_text()
  assert readiness.host_callbacks(text)
  assert not readiness.host_callbacks(jax.jit(lambda x: x * 2).lower(jnp.ones(3)).as_text())


@pytest.mark.parametrize("kernel,stride,size", [(7, 2, 32), (3, 2, 7), (3, 1, 5), (1, 2, 9)])
def test_conv_macs_inside_the_image_are_xlas_count(kernel, stride, size):
  conv = {"cin": 3, "cout": 4, "kernel": kernel, "stride": stride, "size": size}
  pad = kernel // 2
  lowered = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (stride, stride), [(pad, pad)] * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))).lower(
          jnp.ones((2, size, size, 3)), jnp.ones((kernel, kernel, 3, 4)))
  assert lowered.cost_analysis()["flops"] == 2 * 2 * readiness.conv_macs(conv)
  assert readiness.conv_macs(conv, skip_padding=False) >= readiness.conv_macs(conv)


def test_resnet50_convolutions_are_conv_breakdowns():
  ours = readiness.resnet_convs(food101.get_config().model, 224)
  theirs = conv_breakdown.resnet50_convs(224)
  assert len(ours) == sum(conv["count"] for conv in theirs) == 53
  assert (sum(readiness.conv_macs(c, skip_padding=False) for c in ours)
          == sum(c["count"] * conv_breakdown.conv_macs(c, 1) for c in theirs))


@pytest.mark.parametrize("depth,width,small_stem", [(18, 1 / 16, False), (34, 0.25, True),
                                                    (50, 0.5, False)])
def test_analytic_layers_are_the_models(depth, width, small_stem):
  config = food101.get_config()
  config.model.depth, config.model.width_multiplier = depth, width
  config.model.small_image_stem = small_stem
  params = jax.eval_shape(lambda: model_lib.init_variables(config, 0)[0])
  assert readiness.check_layers_match(config, params, 32)
  config.model.depth = 34 if depth == 18 else 18  # Another network: no longer the same.
  assert not readiness.check_layers_match(config, params, 32)
