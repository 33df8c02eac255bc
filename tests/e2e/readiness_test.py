"""benchmarks/readiness.py: its checks pass on the project's step, fail where they must, and
its counts agree with XLA's and with the ResNet's and the ViT's layers counted by hand."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import io_callback

from benchmarks import conv_breakdown, readiness
from configs import food101
from simclr_jax import backbones
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


# The lowered step's figures by hand. ResNet-50: 53 convolutions, each forward, weight
# gradient and input gradient but the stem's input: 158; ResNet-50's 4.09 GMAC forward
# (conv_breakdown's count) and 24.3 GFLOP per view for a step, of which XLA counts the taps
# inside the image (23.5). MoCo v3's ViT-S/16 (two passes over the views, a momentum
# encoder): its patch embedding forward and weight gradient, and the momentum encoder's
# forward, per pass: 6 convolutions; per pass, 12 blocks x 6 products (qkv, proj, fc1,
# fc2, q k^T, softmax(.) v) x 3 and the projector's 3 and predictor's 2 dense layers x 3
# online, 12 x 6 + 3 for the momentum encoder and projector: 2 x (231 + 75) = 612 in
# bf16; timm's 4.6 GMAC forward (the 'GMACs' of vit_small_patch16_224's model card).
LOWERED = {
    "resnet50": ((), {"convolutions": 158, "encoder_gmac": 4.0871, "step_gflop": 24.34,
                      "bf16_products": None}),
    "vit_s16": (("--config=configs/food101_mocov3_vit_s16.py",),
                {"convolutions": 6, "encoder_gmac": 4.5985, "step_gflop": 36.84,
                 "bf16_products": 612}),
}


@pytest.mark.parametrize("model", sorted(LOWERED))
def test_lowered_step_is_bf16_without_callbacks_at_the_analytic_flops(tmp_path, model):
  """The Food-101 step at 224 px, lowered (seconds): every convolution (and a ViT's every
  matrix product but the loss's) in bf16, as many as the network implies; in float32 the
  same check fails."""
  args, expected = LOWERED[model]
  status, checks = _readiness(tmp_path, *args, "--checks=bf16,flops", "--batch_size=16")
  assert status == 0, checks
  bf16, flops = checks["bf16"], checks["flops"]
  assert bf16["ok"] and bf16["global_batch"] == 16 and bf16["image_size"] == 224
  assert bf16["convolutions"] == bf16["bf16_convolutions"] == expected["convolutions"]
  assert bf16["host_callbacks"] == []
  assert bf16.get("bf16_dot_generals") == expected["bf16_products"]
  assert flops["ok"] and flops["layers_match_params"]
  assert flops["textbook_encoder_forward_gmac"] == expected["encoder_gmac"]
  assert abs(flops["textbook_gflop_per_view"] - expected["step_gflop"]) < 0.01
  assert abs(flops["xla_gflop_per_view"] / flops["analytic_gflop_per_view"] - 1) <= 0.05

  status, checks = _readiness(tmp_path, *args, "--checks=bf16", "--batch_size=16",
                              "--config.compute_dtype=float32")
  assert status == 1 and not checks["bf16"]["ok"]
  assert checks["bf16"]["bf16_convolutions"] == 0
  assert checks["bf16"]["convolution_dtypes"] == {"f32,f32->f32": expected["convolutions"]}
  if expected["bf16_products"]:
    assert checks["bf16"]["bf16_dot_generals"] == 0
    assert checks["bf16"]["other_dot_generals"] == expected["bf16_products"]


# The small steps' collectives by hand (the arrays they move), 8 devices, batch 16.
# ResNet-18 at 1/16 width, 32 px, SimCLR: BatchNorms 1 (stem) + 8 blocks x 2 + 3
# projections + 3 in the head = 23; parameters 20 convolution kernels + 3 dense kernels + 20
# x 2 BatchNorm scales and biases + the head's 2 + 2 + 1 (its last BatchNorm has a scale
# only) = 68. Forward: each BatchNorm's mean and mean of squares. Backward: each
# parameter's gradient, and one more batch sum per BatchNorm (each has a scale). The loss:
# its value and accuracy, and both views' (16, 128) embeddings gathered, their gradients
# scattered.
# MoCo v3's recipe on the 'mu' ViT (4 blocks, width 64), 32 px, each view alone (2 passes):
# no BatchNorm in the encoder; the projector's 2 hidden and its last (no affine), the
# predictor's hidden and its last: 5 online, 3 in the momentum projector = 8; parameters:
# the encoder's 53 (patch embedding 2, class token 1, 4 blocks x 12, final norm 2; the
# frozen patch embedding's gradient is computed for the gradient norm) and the heads' 11
# (5 kernels, 3 BatchNorms x 2) = 64. Forward 8 x 2 x 2 passes = 32; backward 64 x 2 passes
# + 2 x (3 + 2 x 2) = 142 (the last BatchNorms have no scale: two sums each); the loss's
# 4 psums, its 2 key gathers (the keys have no gradient: nothing scattered).
SMALL = {
    "resnet18": ((), {"batch_norms": 23, "parameters": 68, "gathers": [[16, 128]] * 2,
                      "arrays": {"all-gather": 2, "reduce-scatter": 2,
                                 "all-reduce forward": 2 * 23,
                                 "all-reduce backward": 68 + 23, "all-reduce loss": 2,
                                 "all-reduce scalars": 0}}),
    # MoCo v3's heads at test widths (its 4096-wide ones cost minutes of CPU compile).
    "vit_mu": (("--config=configs/food101_mocov3_vit_s16.py",
                "--config.mocov3.projector_widths=(64,64,32)",
                "--config.mocov3.predictor_widths=(64,32)"),
               {"batch_norms": 8, "parameters": 64, "gathers": [[16, 32]] * 2,
                "arrays": {"all-gather": 2, "reduce-scatter": 0, "all-reduce forward": 32,
                           "all-reduce backward": 142, "all-reduce loss": 4,
                           "all-reduce scalars": 0}}),
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(SMALL))
def test_small_step_collectives_compile_once_and_cache(tmp_path, model):
  """The compiled checks on a small model of the config, 32 px, 8 devices: one CPU compile
  of the step, one of its initialisation, five steps and a checkpoint (the ResNet's about a
  minute; the ViT's, with MoCo v3's heads and two passes, 7 minutes at their 4096 widths
  with the machine shared at load 10, 2026-12-03: hence test widths)."""
  args, expected = SMALL[model]
  status, checks = _readiness(tmp_path, *args,
                              "--checks=collectives,compile_cache,no_recompile")
  assert status == 0, checks
  collectives = checks["collectives"]
  assert collectives["ok"] and collectives["devices"] == 8
  assert collectives["batch_norms"] == expected["batch_norms"]
  assert collectives["parameters"] == expected["parameters"]
  assert collectives["arrays"] == expected["arrays"]
  assert collectives["loss_gathers"] == expected["gathers"]
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


@pytest.mark.parametrize("variant,patch", [("mu", 16), ("mu", 8), ("S", 16)])
def test_analytic_vit_layers_are_the_models(variant, patch):
  config = food101.get_config()
  config.model.name, config.model.vit.variant, config.model.vit.patch_size = "vit", variant, patch
  params = jax.eval_shape(lambda: model_lib.init_variables(config, 0)[0])
  assert readiness.check_layers_match(config, params, 32)
  config.model.vit.variant = "Ti" if variant == "mu" else "mu"  # Another width and depth.
  assert not readiness.check_layers_match(config, params, 32)


def test_vit_s16_forward_macs_are_timms_and_xlas():
  """ViT-S/16 at 224 px: timm's vit_small_patch16_224 card says 4.6 GMACs; XLA's cost
  analysis of the encoder's forward (float32, lowered) counts 2 FLOPs a multiply-add and a
  little more (LayerNorm, GELU, softmax: 3%)."""
  config = food101.get_config()
  config.model.name, config.compute_dtype = "vit", "float32"
  layers = readiness.vit_layers(config.model, 224)
  assert (layers["tokens"], layers["width"], layers["depth"]) == (197, 384, 12)
  macs = readiness.vit_macs(layers)
  assert round(macs["total"] / 1e9, 1) == 4.6
  # By hand: 196 patches x 768 x 384; 197 tokens x 12 blocks x 12 x 384^2; 12 x 2 x 197^2 x 384.
  assert macs == {"patch_embed": 57_802_752, "dense": 4_183_031_808,
                  "attention": 357_663_744, "total": 4_598_498_304}
  encoder = backbones.create(config, nnx.Rngs(0))
  lowered = jax.jit(lambda x: encoder(x, train=False)).lower(
      jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  # 1.029: the GELUs (erf), softmaxes and LayerNorms; attention alone is 7.8% of the total.
  assert 1.0 < lowered.cost_analysis()["flops"] / (2 * macs["total"]) < 1.04
