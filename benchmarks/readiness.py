"""Know before you rent: what this CPU can tell about the pretraining step before an
accelerator is paid for (issue 27).

    python benchmarks/readiness.py [--config=configs/food101.py] [--checks=...]
        [--batch_size=0] [--image_size=0] [--small_depth=18] [--small_width=0.0625]
        [--small_vit_variant=mu] [--small_image_size=32] [--small_batch_per_device=2]
        [--cache_dir=] [--config.x=...]

A ResNet or a ViT (config.model.name; e.g. configs/food101_mocov3_vit_s16.py, or
--config.model.name=vit for food101.py's SimCLR on ViT-S/16).

Five checks, one JSON line each on stdout ({"check": name, "ok": bool, ...figures}); the exit
status is 1 when any check fails. 8 simulated CPU devices (unless XLA_FLAGS names a count).

  bf16          the config's step (ResNet-50 at 224 px for food101.py), lowered to
                StableHLO, not compiled: every convolution computes in bfloat16 (operands and
                result), there are as many as the network implies (forward, weight and input
                gradients; none for the stem's input), and no host callback (jax.debug.print,
                pure_callback, io_callback: a custom call to a Python callback; infeed,
                outfeed, send or recv). A ViT: its patch embedding is the one convolution,
                and every dot_general computes in bfloat16 (operands, or the algorithm
                it names: attention's logits accumulate in float32), as many as the
                blocks' dense layers, attention's two products and the heads imply, but
                those that ask for HIGHEST precision (the losses' logits) and the online
                probe's.
  flops         XLA's cost analysis of that lowered program (no compile), FLOPs per view,
                within --flops_tolerance of the analytic figure: every convolution's and
                dense layer's multiply-adds from the layer shapes the config implies, x2
                FLOPs, x3 passes (forward, input and weight gradients) less the stem's input
                gradient; a target network forward only, an online probe forward and weight
                gradient. The analytic count skips the kernel taps over padding, as XLA does.
                A ViT: the patch embedding, each block's dense layers on every token and
                attention's q k^T and softmax(.) v (T^2 D multiply-adds each).
  collectives   the step of a small ResNet or ViT of the same config (--small_*), compiled
                for the 8-device mesh (SPMD), every array its collectives move counted
                against the model: the all-gathers, reduce-scatters and psums the loss
                asks for itself (in the lowered program: SimCLR's two (N, D) key gathers
                and their gradients), and the all-reduces the partitioner adds for the
                split batch, exactly: each BatchNorm application's mean and mean of
                squares (forward), each parameter's gradient once per pass over the
                views, and each BatchNorm's batch sums for its input gradient
                (backward); no all-to-all, no collective-permute.
  no_recompile  the small step run 3 steps, saved with the project's Orbax checkpoints,
                restored (into the fresh state's structure and shardings, as a resumed run
                does) and run 2 more: traced and compiled once, before the first step's
                result (jax.monitoring's events for the step's function).
  compile_cache the small step's compile cold (an empty persistent compilation cache,
                training.compile_cache.set_up) and warm (in-memory caches cleared, the
                persistent cache on): the cold one misses, the warm one loads.

Imports no TensorFlow, TFDS or CLU. XLA's CPU compile of the ResNet-50 step takes minutes on
2 cores, so only the small step is compiled; lowering the big one takes seconds.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

DEVICES = 8


def _set_environment() -> None:
  """Before JAX is imported: the CPU, 8 simulated devices, and no compilation cache folder
  from the environment (the compile_cache check picks its own, so that cold is cold)."""
  os.environ["JAX_PLATFORMS"] = "cpu"
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={DEVICES}").strip()
  os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)


if __name__ == "__main__":  # Imported (by tests), it leaves the environment alone.
  _set_environment()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.monitoring  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from simclr_jax import backbones, methods, sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.backbones import resnet, vit  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.stages import compile_check  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.training import checkpoints, compile_cache  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.training import model as model_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.training.pretrain_step import abstract_batch  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.training.state import TrainState, abstract_train_state, init_train_state  # pylint: disable=g-import-not-at-top,wrong-import-position

CHECKS = ("bf16", "flops", "collectives", "no_recompile", "compile_cache")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/food101.py", "A config file.",
                                lock_config=True)
flags.DEFINE_list("checks", list(CHECKS), f"Which checks, of {', '.join(CHECKS)}.")
flags.DEFINE_integer("batch_size", 0, "Global batch of the lowered step; 0: the config's.")
flags.DEFINE_integer("image_size", 0, "View size of the lowered step; 0: the config's.")
flags.DEFINE_float("flops_tolerance", 0.05, "Allowed |XLA / analytic - 1| of FLOPs per view.")
flags.DEFINE_integer("small_depth", 18, "ResNet depth of the compiled (small) step.")
flags.DEFINE_float("small_width", 1 / 16, "ResNet width multiplier of the small step.")
flags.DEFINE_string("small_vit_variant", "mu", "ViT variant of the small step (its heads "
                    "too; the config's patch size).")
flags.DEFINE_integer("small_image_size", 32, "View size of the small step.")
flags.DEFINE_integer("small_batch_per_device", 2, "Images per device of the small step.")
flags.DEFINE_string("cache_dir", "", "Persistent compilation cache of the compile_cache "
                    "check; empty: a fresh temporary folder (so that the cold compile is).")

# jax.monitoring events (jax/_src/dispatch.py in jax 0.10.2), with the traced function's
# name: a trace of the Python function, and a backend compile (from scratch or loaded
# from the persistent cache).
_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"
STEP_FUNCTION = "train_step"  # training.pretrain_step.train_step: what the events name.


# ------------------------------------------------------------ the analytic layer shapes

def resnet_convs(model_config, image_size: int) -> list[dict[str, int]]:
  """Every convolution of the ResNet that `model_config` describes, in order, on
  (image_size, image_size) views: {cin, cout, kernel, stride, size (its input's side)}.
  From He et al. (2016), Table 1, as torchvision's v1.5 (the stride on the 3x3), with the
  width multiplier and the small-image stem of this project's config."""
  base = max(1, round(64 * model_config.width_multiplier))  # As resnet.ResNet.
  bottleneck = model_config.depth in resnet.BOTTLENECK_DEPTHS
  convs = []

  def conv(cin, cout, kernel, stride, size):
    convs.append({"cin": cin, "cout": cout, "kernel": kernel, "stride": stride,
                  "size": size})
    return _out_size(size, kernel, stride)

  if model_config.small_image_stem:
    size = conv(3, base, 3, 1, image_size)
  else:
    size = _out_size(conv(3, base, 7, 2, image_size), 3, 2)  # Then the 3x3/2 max-pool.
  cin = base
  for stage, blocks in enumerate(resnet.STAGE_SIZES[model_config.depth]):
    width = base * 2**stage
    cout = 4 * width if bottleneck else width
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      if bottleneck:
        out = conv(width, cout, 1, 1, conv(width, width, 3, stride, conv(cin, width, 1, 1, size)))
      else:
        out = conv(width, cout, 3, 1, conv(cin, width, 3, stride, size))
      if stride != 1 or cin != cout:
        conv(cin, cout, 1, stride, size)  # The projection shortcut.
      cin, size = cout, out
  return convs


def _out_size(size: int, kernel: int, stride: int) -> int:
  return (size + 2 * (kernel // 2) - kernel) // stride + 1


def conv_macs(conv: dict[str, int], skip_padding: bool = True) -> int:
  """Multiply-adds of one convolution on one image. `skip_padding`: only the kernel taps
  that land inside the image (what is computed; XLA's cost analysis counts these);
  else every tap of every output position (the textbook figure)."""
  k, s, pad, size = conv["kernel"], conv["stride"], conv["kernel"] // 2, conv["size"]
  out = _out_size(size, k, s)
  taps = (sum(1 for o in range(out) for j in range(k) if 0 <= o * s + j - pad < size)
          if skip_padding else out * k)  # Along one axis; the two axes multiply.
  return taps**2 * conv["cin"] * conv["cout"]


def dense_macs(params) -> dict[str, int]:
  """{top-level module: multiply-adds per example of its dense layers (2-D kernels)}."""
  macs = collections.Counter()
  for path, leaf in _leaves(params):
    if len(leaf.shape) == 2:
      macs[path[0]] += math.prod(leaf.shape)
  return dict(macs)


def passes(config) -> int:
  """Passes over the views per step: 2 when the method forwards them separately."""
  block = config[methods.get(config).name]
  return 2 if block.get("forward_views_separately", False) else 1


def analytic_flops_per_view(config, params, image_size: int,
                            skip_padding: bool = True) -> dict[str, float]:
  """FLOPs of one view in one training step, from the layer shapes: the online network's
  convolutions, dense layers (and a ViT's attention products) forward and both gradients
  (the stem or patch embedding has no input gradient: its input is the data), the target
  network's forward only, the online probe's forward and weight gradient (its input, the
  features, is a constant)."""
  encoder, stem = encoder_macs(config, image_size, skip_padding)
  targets = methods.get(config).target_modules
  dense = dense_macs(params)
  heads = sum(v for k, v in dense.items() if k not in ("encoder", "probe"))
  target_heads = sum(v for k, v in dense.items() if k in targets and k != "encoder")
  online = 3 * (encoder + heads) - stem
  target = (encoder if "encoder" in targets else 0) + target_heads
  probe = 2 * dense.get("probe", 0)
  return {"flops": 2.0 * (online + target + probe), "encoder_forward_macs": encoder,
          "head_forward_macs": heads}


def vit_layers(model_config, image_size: int) -> dict[str, Any]:
  """The layer shapes of the ViT that `model_config` describes, on (image_size,
  image_size) views (Dosovitskiy et al. 2021, Eq. 1-4, as timm's VisionTransformer):
  {patch_kernel (p, p, 3, D), patches, tokens (the class token and the patches), width,
  depth, dense: each block's (in, out) kernels applied to every token (qkv, proj, fc1,
  fc2)}."""
  width, depth, _ = vit.architecture(model_config)
  patch = model_config.vit.patch_size
  patches = (image_size // patch)**2
  block = [(width, 3 * width), (width, width), (width, vit.MLP_RATIO * width),
           (vit.MLP_RATIO * width, width)]
  return {"patch_kernel": (patch, patch, 3, width), "patches": patches,
          "tokens": 1 + patches, "width": width, "depth": depth, "dense": block * depth}


def vit_macs(layers: dict[str, Any]) -> dict[str, int]:
  """Multiply-adds of one view's ViT forward: the patch embedding (a p x p, stride p
  convolution: each patch times a (3 p^2, D) matrix), every block's dense layers on every
  token, and attention's two products per block, q k^T and softmax(.) v, T^2 D each
  (whatever the heads: they split D). LayerNorm, GELU and softmax are left out."""
  patch = layers["patches"] * math.prod(layers["patch_kernel"])
  dense = layers["tokens"] * sum(a * b for a, b in layers["dense"])
  attention = layers["depth"] * 2 * layers["tokens"]**2 * layers["width"]
  return {"patch_embed": patch, "dense": dense, "attention": attention,
          "total": patch + dense + attention}


def encoder_macs(config, image_size: int, skip_padding: bool = True) -> tuple[int, int]:
  """(the encoder's forward multiply-adds per view, those of its first layer: the one whose
  input is the data, so that it has no input gradient)."""
  if _family(config) is vit:
    macs = vit_macs(vit_layers(config.model, image_size))
    return macs["total"], macs["patch_embed"]
  convs = resnet_convs(config.model, image_size)
  return (sum(conv_macs(c, skip_padding) for c in convs), conv_macs(convs[0], skip_padding))


def check_layers_match(config, params, image_size: int) -> bool:
  """The analytic layers are the model's: the same multiset of kernel shapes (a ResNet's
  convolutions; a ViT's patch embedding and dense layers)."""
  if _family(config) is vit:
    layers = vit_layers(config.model, image_size)
    analytic = sorted([layers["patch_kernel"], *layers["dense"]])
    model = sorted(tuple(leaf.shape) for leaf in jax.tree.leaves(params["encoder"])
                   if len(leaf.shape) in (2, 4))
    return analytic == model
  analytic = sorted((c["kernel"], c["kernel"], c["cin"], c["cout"])
                    for c in resnet_convs(config.model, image_size))
  model = sorted(tuple(leaf.shape) for leaf in jax.tree.leaves(params["encoder"])
                 if len(leaf.shape) == 4)
  return analytic == model


def _family(config):
  """The backbone family's module (the registry's, not its name)."""
  return backbones.BACKBONES.get(config.model.name)


# ------------------------------------------------------------- the program's text

_CONV = re.compile(r"stablehlo\.convolution\(.*:\s*\((.*)\)\s*->\s*(tensor<[^>]*>)")
_ELEMENT = re.compile(r"tensor<(?:[\d?]+x)*(\w+)>")
_CUSTOM_CALL = re.compile(r"stablehlo\.custom_call\s+@([\w.]+)")
_HOST_OPS = re.compile(r"stablehlo\.(infeed|outfeed|send|recv)\b")


def convolution_dtypes(stablehlo: str) -> collections.Counter:
  """{'lhs,rhs->out' element types: count} over the StableHLO's convolutions."""
  found = collections.Counter()
  for operands, result in _CONV.findall(stablehlo):
    found[f"{','.join(_ELEMENT.findall(operands))}->{_ELEMENT.findall(result)[0]}"] += 1
  return found


_DOT = re.compile(r"stablehlo\.dot_general\b(.*):\s*\((.*)\)\s*->\s*(tensor<[^>]*>)\s*$",
                  re.MULTILINE)
_ALGORITHM = re.compile(r"lhs_precision_type = (\w+), rhs_precision_type = (\w+)")


def dot_general_dtypes(stablehlo: str) -> collections.Counter:
  """{'lhs,rhs->out' element types: count} over the StableHLO's dot_generals; 'lhs,rhs'
  are the types the product computes in when the op names an algorithm (jax's attention
  asks BF16_BF16_F32 for its logits, so their gradients take float32 cotangents and still
  multiply in bfloat16), and ' HIGHEST' follows when it asks for full precision."""
  found = collections.Counter()
  for attributes, operands, result in _DOT.findall(stablehlo):
    algorithm = _ALGORITHM.search(attributes)
    inputs = algorithm.groups() if algorithm else _ELEMENT.findall(operands)
    highest = " HIGHEST" if "HIGHEST" in attributes else ""
    found[f"{','.join(inputs)}->{_ELEMENT.findall(result)[0]}{highest}"] += 1
  return found


def host_callbacks(stablehlo: str) -> list[str]:
  """Custom calls to a Python callback (what jax.debug.print, jax.debug.callback,
  pure_callback and io_callback lower to: 'xla_ffi_python_cpu_callback' in jax 0.10.2)
  and host transfers (infeed, outfeed, send, recv): each one a step's round trip to the
  host."""
  calls = [name for name in _CUSTOM_CALL.findall(stablehlo) if "callback" in name.lower()]
  return calls + _HOST_OPS.findall(stablehlo)


_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT )?%\S+ = (.+?) (all-reduce|all-gather|reduce-scatter|all-to-all|"
    r"collective-permute)(?:-start)?\((.*)$", re.MULTILINE)
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")


def collective_arrays(hlo: str) -> list[tuple[str, str, tuple[int, ...]]]:
  """(kind, phase, shape) of every array that a collective of the compiled HLO moves (XLA
  combines several arrays into one instruction; counting arrays is what stays fixed). The
  phase: 'backward' when the instruction's op_name has JAX's `transpose(` (autodiff's
  backward pass; a combined instruction names all its parts), else 'forward'."""
  arrays = []
  for result, kind, rest in _COLLECTIVE.findall(hlo):
    name = re.search(r'op_name="([^"]*)"', rest)
    phase = "backward" if name and "transpose(" in name.group(1) else "forward"
    for _, dims in _ARRAY.findall(result):
      arrays.append((kind, phase, tuple(int(d) for d in dims.split(",") if d)))
  return arrays


_LOWERED_COLLECTIVE = re.compile(r'"stablehlo\.(all_gather|reduce_scatter|all_reduce)"\(')
_SIGNATURE_RESULT = re.compile(r"\)\s*->\s*(\([^()]*\)|tensor<[^>]*>)")
_TENSOR_SHAPE = re.compile(r"tensor<((?:\d+x)*)\w+>")


def explicit_collectives(stablehlo: str) -> list[tuple[str, tuple[int, ...]]]:
  """(kind as in HLO, result shape) of each collective the program asks for itself (the
  losses' all_gather and psum under jax.shard_map, and autodiff's reduce-scatters of the
  gathers), from the lowered StableHLO: what the compiled program must hold beside what
  the SPMD partitioner adds. An op's signature is the first `) -> ` after it (an
  all-reduce's comes after its reduction region, whose ops have none)."""
  found = []
  for match in _LOWERED_COLLECTIVE.finditer(stablehlo):
    result = _SIGNATURE_RESULT.search(stablehlo, match.end()).group(1)
    for dims in _TENSOR_SHAPE.findall(result):
      found.append((match.group(1).replace("_", "-"),
                    tuple(int(d) for d in dims.split("x") if d)))
  return found


def _key(shape) -> tuple[int, ...]:
  """A shape as a layout-free key: size-1 axes dropped, the rest sorted (a gradient may
  come back as (1, 1, C) or with a dense kernel's axes swapped)."""
  return tuple(sorted(d for d in shape if d != 1))


# ------------------------------------------------------------------------ the checks

def lowered_step(config, mesh):
  """(the step lowered for `mesh` with the config's state and batch, its abstract state,
  seconds to trace and lower)."""
  step, tx, probe_classes = compile_check.nominal_step(config, mesh)
  state = abstract_train_state(config, tx, mesh, probe_classes)
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    lowered = step.lower(state, abstract_batch(config, mesh))
  return lowered, state, time.perf_counter() - start


def check_bf16(config, lowered, state, lower_s: float) -> dict[str, Any]:
  """Check 1: every convolution in bfloat16, as many as the network implies, and no host
  callback; for a ViT also every matrix product but those that ask for full precision
  (the losses' logits) and the online probe's, as many as the network implies."""
  text = lowered.as_text()
  dtypes = convolution_dtypes(text)
  is_vit = _family(config) is vit
  convs = 1 if is_vit else len(resnet_convs(config.model, config.augment.image_size))
  target_encoder = "encoder" in methods.get(config).target_modules
  # Per pass: forward, weight and input gradients of each (none for the stem's input);
  # a target encoder's forward.
  expected = passes(config) * (3 * convs - 1 + (convs if target_encoder else 0))
  callbacks = host_callbacks(text)
  bf16 = dtypes.get("bf16,bf16->bf16", 0)
  total = sum(dtypes.values())
  result = {"check": "bf16",
            "ok": bf16 == total == expected and not callbacks,
            "compute_dtype": config.compute_dtype, "image_size": config.augment.image_size,
            "global_batch": config.batch_size, "convolutions": total,
            "expected_convolutions": expected, "bf16_convolutions": bf16,
            "convolution_dtypes": dict(dtypes), "host_callbacks": callbacks,
            "custom_calls": sorted(set(_CUSTOM_CALL.findall(text))),
            "lower_s": round(lower_s, 2)}
  if is_vit:
    result.update(_check_vit_products(config, text, state.params))
    result["ok"] = result["ok"] and result["products_ok"]
  return result


def _check_vit_products(config, stablehlo: str, params) -> dict[str, Any]:
  """A ViT's matrix products (dot_generals): those of the encoder (each block's four dense
  layers and attention's two products) and of the heads compute in bfloat16, forward,
  input and weight gradients (attention's two products: both operands' gradients) for the
  online network, forward only for a target network; the rest are full-precision float32
  ones that the losses ask for and the online probe's forward and weight gradient."""
  dtypes = dot_general_dtypes(stablehlo)
  targets = methods.get(config).target_modules
  dense = {k: v for k, v in _dense_kernels(params).items() if k != "probe"}
  encoder = 6 * vit.architecture(config.model)[1]
  heads = sum(v for k, v in dense.items() if k != "encoder")
  target = ((encoder if "encoder" in targets else 0)
            + sum(v for k, v in dense.items() if k in targets and k != "encoder"))
  expected = passes(config) * (3 * (encoder + heads) + target)
  bf16 = sum(n for key, n in dtypes.items() if key.startswith("bf16,bf16->"))
  highest = sum(n for key, n in dtypes.items() if key.endswith(" HIGHEST"))
  probe = 2 * _dense_kernels(params).get("probe", 0)
  other = sum(dtypes.values()) - bf16 - highest
  return {"products_ok": bf16 == expected and other == probe,
          "dot_generals": sum(dtypes.values()), "bf16_dot_generals": bf16,
          "expected_bf16_dot_generals": expected, "highest_precision_dot_generals": highest,
          "other_dot_generals": other, "probe_dot_generals": probe,
          "dot_general_dtypes": dict(dtypes)}


def _dense_kernels(params) -> collections.Counter:
  """{top-level module: its dense layers (2-D kernels)}."""
  return collections.Counter(path[0] for path, leaf in _leaves(params) if len(leaf.shape) == 2)


def check_flops(config, lowered, state, tolerance: float) -> dict[str, Any]:
  """Check 2: XLA's FLOPs per view of the lowered step against the analytic figure."""
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # Older JAX: one per module.
  views = 2 * config.batch_size
  xla = float(cost["flops"]) / views
  size = config.augment.image_size
  analytic = analytic_flops_per_view(config, state.params, size)
  textbook = analytic_flops_per_view(config, state.params, size, skip_padding=False)
  ratio = xla / analytic["flops"]
  layers_match = check_layers_match(config, state.params, size)
  return {"check": "flops", "ok": layers_match and abs(ratio - 1) <= tolerance,
          "image_size": size, "global_batch": config.batch_size,
          "xla_gflop_per_view": round(xla / 1e9, 3),
          "analytic_gflop_per_view": round(analytic["flops"] / 1e9, 3),
          "ratio": round(ratio, 4), "tolerance": tolerance,
          "textbook_gflop_per_view": round(textbook["flops"] / 1e9, 3),
          "encoder_forward_gmac": round(analytic["encoder_forward_macs"] / 1e9, 4),
          "head_forward_gmac": round(analytic["head_forward_macs"] / 1e9, 4),
          "textbook_encoder_forward_gmac": round(textbook["encoder_forward_macs"] / 1e9, 4),
          "layers_match_params": layers_match}


def expected_collectives(config, state, stablehlo: str) -> dict[str, Any]:
  """What the model implies each collective moves, as layout-free shape keys (_key): the
  program's own collectives (the loss's) as the lowered step asks for them, and the
  all-reduces that the SPMD partitioner adds for a batch split over the devices."""
  repeats = passes(config)
  online = _means(state.batch_stats)
  target = _means(state.target["batch_stats"]) if state.target is not None else []
  scaled = {path for path, _ in _leaves(state.params) if path[-1] == "scale"}
  explicit = collections.defaultdict(collections.Counter)
  for kind, shape in explicit_collectives(stablehlo):
    explicit[kind][_key(shape)] += 1
  gradients = collections.Counter(_key(leaf.shape) for leaf in jax.tree.leaves(state.params))
  # The input gradient of a BatchNorm needs two batch sums per channel (of dy and of dy
  # times the normalised input); the second is its scale's gradient when it has one.
  statistics_gradients = collections.Counter()
  for path, shape in online:
    statistics_gradients[_key(shape)] += repeats * (1 if (*path[:-1], "scale") in scaled else 2)
  return {
      "all-gather": explicit["all-gather"], "reduce-scatter": explicit["reduce-scatter"],
      "loss all-reduce": explicit["all-reduce"],
      # Every BatchNorm application (a pass over the views; the target network's too): its
      # batch mean and mean of squares, over all devices.
      "forward": collections.Counter(_key(shape)
                                     for _, shape in (online + target) * 2 * repeats),
      # Every parameter's gradient, once per pass (XLA's CPU pipeline reduces each pass's
      # share, then adds), and each online BatchNorm application's statistics gradient.
      "gradients": gradients, "passes": repeats,
      "backward": collections.Counter({key: count * repeats
                                       for key, count in gradients.items()})
                  + statistics_gradients,
      "batch_norms": len(online) + len(target),
  }


def _leaves(tree) -> list[tuple[tuple[str, ...], Any]]:
  """(path as strings, leaf) of a nested dict's leaves."""
  return [(tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path), leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _means(batch_stats) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
  """(path, shape) of each BatchNorm's running mean: one per BatchNorm layer."""
  return [(path, leaf.shape) for path, leaf in _leaves(batch_stats) if path[-1] == "mean"]


def check_collectives(config, lowered, compiled, state) -> dict[str, Any]:
  """Check 3: the compiled SPMD step's collectives against what the model implies: the
  loss's gathers, scatters and psums as the program asks for them, every BatchNorm's
  statistics, every parameter's gradient, nothing else."""
  hlo = compiled.as_text()
  found = collections.defaultdict(collections.Counter)
  for kind, phase, shape in collective_arrays(hlo):
    found[f"{phase} all-reduce" if kind == "all-reduce" else kind][_key(shape)] += 1
  expected = expected_collectives(config, state, lowered.as_text())
  # The loss's own psums, in whichever phase XLA put them (the loss's value often rides
  # with the gradients); then the scalars the partitioner adds (a mean loss under plain
  # jit, BYOL's).
  loss = expected["loss all-reduce"]
  in_forward = loss & found["forward all-reduce"]
  forward = found["forward all-reduce"] - in_forward
  backward = found["backward all-reduce"] - (loss - in_forward)
  scalars = forward.pop((), 0) + backward.pop((), 0)
  n = config.batch_size
  result = {
      "loss_all_gathers_ok": (found["all-gather"] == expected["all-gather"]
                              and all(n in key for key in found["all-gather"])),
      "loss_reduce_scatters_ok": found["reduce-scatter"] == expected["reduce-scatter"],
      "loss_all_reduces_ok": not (loss - found["forward all-reduce"]
                                  - found["backward all-reduce"]),
      "forward_statistics_ok": forward == expected["forward"],
      "every_gradient_reduced": not (expected["gradients"] - backward),
      "backward_ok": backward == expected["backward"],
      "no_other_collectives_ok": not (found["all-to-all"] or found["collective-permute"]),
  }
  counts = compile_check.collectives(hlo)
  return {"check": "collectives", "ok": all(result.values()), **result,
          "devices": jax.device_count(), "global_batch": n,
          "image_size": config.augment.image_size, "model": backbones.describe(config.model),
          "instructions": {op: c["count"] for op, c in counts.items() if c["count"]},
          "arrays": {"all-gather": sum(found["all-gather"].values()),
                     "reduce-scatter": sum(found["reduce-scatter"].values()),
                     "all-reduce forward": sum(forward.values()),
                     "all-reduce backward": sum(backward.values()),
                     "all-reduce loss": sum(loss.values()), "all-reduce scalars": scalars},
          "loss_gathers": sorted(list(key) for key in found["all-gather"].elements()),
          "batch_norms": expected["batch_norms"],
          "parameters": sum(expected["gradients"].values()),
          "passes": expected["passes"]}


class StepEvents:
  """Counts, while listening, the step function's traces and backend compiles (those
  loaded from the persistent cache too) and the persistent cache's hits and misses."""

  def __init__(self, function: str = STEP_FUNCTION):
    self.function = function
    self.counts = collections.Counter()

  def _duration(self, event: str, duration: float, **kwargs) -> None:
    del duration
    # Traces name the function ('train_step'), compiles its module ('jit(train_step)').
    if kwargs.get("fun_name") in (self.function, f"jit({self.function})"):
      if event == _TRACE_EVENT:
        self.counts["traces"] += 1
      elif event == _COMPILE_EVENT:
        self.counts["compiles"] += 1

  def _event(self, event: str, **kwargs) -> None:
    del kwargs
    if event == _CACHE_HIT_EVENT:
      self.counts["cache_hits"] += 1
    elif event == _CACHE_MISS_EVENT:
      self.counts["cache_misses"] += 1

  @contextlib.contextmanager
  def listening(self):
    jax.monitoring.register_event_duration_secs_listener(self._duration)
    jax.monitoring.register_event_listener(self._event)
    try:
      yield self
    finally:
      jax.monitoring.unregister_event_duration_listener(self._duration)
      jax.monitoring.unregister_event_listener(self._event)


def timed_compile(step, state, batch, mesh) -> tuple[Any, Any, dict[str, Any]]:
  """(lowered, compiled, {seconds to trace and lower, to compile, and the step's
  events})."""
  with StepEvents().listening() as events, jax.set_mesh(mesh):
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    middle = time.perf_counter()
    compiled = lowered.compile()
    end = time.perf_counter()
  return lowered, compiled, {"lower_s": round(middle - start, 2),
                             "compile_s": round(end - middle, 2), **events.counts}


def check_compile_cache(cold: dict[str, Any], warm: dict[str, Any],
                        cache_dir: str) -> dict[str, Any]:
  """Check 5: the cold compile missed the persistent cache, the warm one loaded from it."""
  cold_ok = cold.get("cache_misses", 0) >= 1 and not cold.get("cache_hits")
  warm_ok = warm.get("cache_hits", 0) >= 1 and not warm.get("cache_misses")
  return {"check": "compile_cache", "ok": cold_ok and warm_ok,
          "cold_missed": cold_ok, "warm_loaded": warm_ok,
          "cold_lower_s": cold["lower_s"], "cold_compile_s": cold["compile_s"],
          "warm_lower_s": warm["lower_s"], "warm_compile_s": warm["compile_s"],
          "speedup": round(cold["compile_s"] / max(warm["compile_s"], 1e-3), 1),
          "cache_dir": cache_dir}


def check_no_recompile(config, mesh, workdir: str) -> dict[str, Any]:
  """Check 4: 3 steps, a checkpoint saved and restored into a fresh state, 2 more steps:
  the step traced and compiled once, before the first step's result."""
  step, tx, probe_classes = compile_check.nominal_step(config, mesh)
  batch = _random_batch(config, mesh)
  state = init_train_state(config, tx, mesh, probe_classes)
  jax.clear_caches()  # The first step compiles here (or loads from the persistent cache).
  after_each = []
  with StepEvents().listening() as events:
    run = _stepper(step, batch, mesh, events, after_each)
    state = run(run(run(state)))
    with checkpoints.create_manager(checkpoints.checkpoint_dir(workdir)) as manager:
      checkpoints.save(manager, int(state.step), state.checkpoint_items(), config)
      manager.wait_until_finished()
      # The restore target's structure, dtypes and shardings: what a resumed run's fresh
      # state gives `restore` (loop.resume), without initialising one again.
      fresh = abstract_train_state(config, tx, mesh, probe_classes)
      restored_step, items = checkpoints.restore(
          manager, fresh.checkpoint_items(), config,
          check_fields=model_lib.model_fields(config))
    same = all(jax.tree.leaves(jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)), state.params, items["model"]["params"])))
    run(run(TrainState.from_checkpoint_items(items)))
  once = after_each[0] == after_each[-1] == {"traces": 1, "compiles": 1}
  return {"check": "no_recompile", "ok": once and same and restored_step == 3,
          "steps": len(after_each), "traces": events.counts["traces"],
          "compiles": events.counts["compiles"],
          "cache_hits": events.counts["cache_hits"],
          "compiles_after_each_step": [c["compiles"] for c in after_each],
          "restored_step": restored_step, "restored_params_equal": same,
          "jit_cache_size": _cache_size(step)}


def _stepper(step, batch, mesh, events: StepEvents,
             after_each: list[dict[str, int]]) -> Callable[[TrainState], TrainState]:
  """state -> the state after one step; appends the step's traces and compiles so far."""
  def run(state):
    with jax.set_mesh(mesh):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    after_each.append({name: events.counts[name] for name in ("traces", "compiles")})
    return state
  return run


def _cache_size(step) -> int | None:
  size = getattr(step, "_cache_size", None)  # jax's jit objects; private, so optional.
  return size() if callable(size) else None


def _random_batch(config, mesh) -> dict[str, jax.Array]:
  """A global batch of random uint8 views (and labels for the online probe), sharded."""
  rng = np.random.default_rng(0)
  size, n = config.augment.image_size, config.batch_size
  batch = {"views": rng.integers(0, 256, (n, 2, size, size, 3), dtype=np.uint8)}
  if config.online_probe:
    batch["label"] = rng.integers(0, config.compile_check.probe_classes, (n,), np.int32)
  return jax.device_put(batch, sharding.batch_sharded(mesh))


# ------------------------------------------------------------------------- main

def lowered_config(config, batch_size: int, image_size: int):
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.batch_size = batch_size or config.batch_size
    config.augment.image_size = image_size or config.augment.image_size
  return config


def small_config(config):
  """The config with a small ResNet or ViT (--small_*) over all the devices."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if _family(config) is vit:
      config.model.vit.variant = FLAGS.small_vit_variant
      config.model.vit.num_heads = None  # The variant's.
    else:
      config.model.depth = FLAGS.small_depth
      config.model.width_multiplier = FLAGS.small_width
    config.augment.image_size = FLAGS.small_image_size
    config.batch_size = FLAGS.small_batch_per_device * jax.device_count()
  return config


def run_checks(config, checks: list[str], scratch: str) -> list[dict[str, Any]]:
  """The checks named in `checks`, in CHECKS' order, each result a JSON line's dict."""
  # Before anything compiles: JAX decides at a process's first compile whether it uses
  # the persistent cache (training/compile_cache.py).
  cache_dir = compile_cache.set_up(FLAGS.cache_dir or os.path.join(scratch, "xla_cache"))
  results = []
  mesh = sharding.create_mesh()
  if {"bf16", "flops"} & set(checks):
    big = lowered_config(config, FLAGS.batch_size, FLAGS.image_size)
    model_lib.check_model_config(big)
    lowered, state, lower_s = lowered_step(big, mesh)
    if "bf16" in checks:
      results.append(check_bf16(big, lowered, state, lower_s))
    if "flops" in checks:
      results.append(check_flops(big, lowered, state, FLAGS.flops_tolerance))
  small = small_config(config)
  model_lib.check_model_config(small)
  if {"collectives", "compile_cache"} & set(checks):
    step, tx, probe_classes = compile_check.nominal_step(small, mesh)
    state = abstract_train_state(small, tx, mesh, probe_classes)
    batch = abstract_batch(small, mesh)
    lowered, compiled, cold = timed_compile(step, state, batch, mesh)
    if "collectives" in checks:
      results.append(check_collectives(small, lowered, compiled, state))
    if "compile_cache" in checks:
      jax.clear_caches()  # What a new process starts from, but for the disk cache.
      _, _, warm = timed_compile(step, state, batch, mesh)
      results.append(check_compile_cache(cold, warm, cache_dir))
  if "no_recompile" in checks:
    results.append(check_no_recompile(small, mesh, os.path.join(scratch, "workdir")))
  return results


def main(argv):
  del argv
  unknown = set(FLAGS.checks) - set(CHECKS)
  if unknown:
    raise app.UsageError(f"Unknown checks {sorted(unknown)}; known: {', '.join(CHECKS)}.")
  if _family(FLAGS.config) not in (resnet, vit):
    raise app.UsageError(f"readiness.py counts a ResNet's or a ViT's layers; "
                         f"config.model.name is {FLAGS.config.model.name!r}.")
  ok = True
  with tempfile.TemporaryDirectory() as scratch:
    for result in run_checks(FLAGS.config, FLAGS.checks, scratch):
      print(json.dumps(result), flush=True)
      ok = ok and result["ok"]
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  app.run(main)
