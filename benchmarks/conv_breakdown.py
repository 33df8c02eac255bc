"""Where a ResNet-50 training step's time goes on this CPU: every distinct convolution of
ResNet-50 at one image size, forward, input gradient and weight gradient timed separately,
in XLA (jax.lax.conv_general_dilated, NHWC / HWIO as the model runs them) or in PyTorch
(the seed's framework, NCHW), plus the machine's float32 matmul rate.

    python benchmarks/conv_breakdown.py [--batch=16] [--size=224] [--reps=5] [--variant=xla]
    /tmp/seedref/bin/python benchmarks/conv_breakdown.py --framework=torch

--variant picks how XLA expresses the convolutions: `xla` (its convolution op), `patches`
(k x k convolutions as an explicit patch extraction times one matmul, the 1x1s as a matmul)
or `shifts` (k x k convolutions as the sum of k*k matmuls of shifted slices).
Prints one JSON line per convolution shape and pass, then a total per pass weighted by how
often ResNet-50 uses each shape (`count`), then `{"what": "matmul", "gflops_per_s"}`.
Imports jax, numpy and the project's `patch_conv` (or, with --framework=torch, only torch
and numpy: it runs in the seed's environment).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resnet50_convs(size: int) -> list[dict]:
  """The distinct convolutions of torchvision's ResNet-50 (v1.5: the stride on the 3x3) on
  (size, size) inputs: in/out channels, kernel, stride, input spatial size, how many."""
  convs = {}

  def add(cin, cout, kernel, stride, spatial):
    key = (cin, cout, kernel, stride, spatial)
    convs[key] = convs.get(key, 0) + 1

  add(3, 64, 7, 2, size)
  spatial = size // 4  # After the stem's stride 2 and the max-pool's.
  cin = 64
  for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
    for block in range(blocks):
      stride = 2 if block == 0 and stage > 0 else 1
      add(cin, width, 1, 1, spatial)
      add(width, width, 3, stride, spatial)
      out_spatial = spatial // stride
      add(width, 4 * width, 1, 1, out_spatial)
      if block == 0:
        add(cin, 4 * width, 1, stride, spatial)
      cin, spatial = 4 * width, out_spatial
  return [dict(cin=k[0], cout=k[1], kernel=k[2], stride=k[3], spatial=k[4], count=c)
          for k, c in convs.items()]


def conv_macs(conv: dict, batch: int) -> int:
  out = conv["spatial"] // conv["stride"]
  return batch * out * out * conv["cout"] * conv["cin"] * conv["kernel"] ** 2


def _median_seconds(fn, reps: int) -> float:
  fn()  # Compile / warm up.
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jax_timers(conv: dict, batch: int, variant: str, return_outputs: bool = False):
  """Forward, input-gradient and weight-gradient callables for one convolution in XLA
  (each returns its result when `return_outputs`, for tests)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from simclr_jax.backbones import patch_conv  # pylint: disable=g-import-not-at-top
  k, s, pad = conv["kernel"], conv["stride"], conv["kernel"] // 2
  x = jnp.asarray(np.random.default_rng(0).standard_normal(
      (batch, conv["spatial"], conv["spatial"], conv["cin"]), np.float32))
  w = jnp.asarray(np.random.default_rng(1).standard_normal(
      (k, k, conv["cin"], conv["cout"]), np.float32) * 0.01)

  def xla_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (s, s), [(pad, pad), (pad, pad)],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def patches_conv(x, w):  # The project's `conv_algorithm="patches"` lowering.
    return patch_conv.conv_general_dilated(x, w, (s, s), [(pad, pad), (pad, pad)],
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def shifts_conv(x, w):
    # The k*k window offsets as k*k matmuls of shifted, strided slices, summed.
    if k == 1:
      return patches_conv(x, w)  # A 1x1 convolution is one matmul either way.
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = (conv["spatial"] + 2 * pad - k) // s + 1
    return sum(jnp.einsum("bhwc,cd->bhwd", padded[:, i:i + s * out:s, j:j + s * out:s, :],
                          w[i, j]) for i in range(k) for j in range(k))

  fn = {"xla": xla_conv, "patches": patches_conv, "shifts": shifts_conv}[variant]
  out = (conv["spatial"] + 2 * pad - k) // s + 1
  cot = jnp.asarray(np.random.default_rng(2).standard_normal(
      (batch, out, out, conv["cout"]), np.float32))
  forward = jax.jit(fn)
  grad_x = jax.jit(lambda x, w, c: jax.vjp(lambda x: fn(x, w), x)[1](c)[0])
  grad_w = jax.jit(lambda x, w, c: jax.vjp(lambda w: fn(x, w), w)[1](c)[0])
  finish = np.asarray if return_outputs else (lambda result: result.block_until_ready())
  return {
      "forward": lambda: finish(forward(x, w)),
      "input_grad": lambda: finish(grad_x(x, w, cot)),
      "weight_grad": lambda: finish(grad_w(x, w, cot)),
  }


def torch_timers(conv: dict, batch: int):
  """The same three passes in PyTorch (torch.nn.functional.conv2d and autograd)."""
  import torch  # pylint: disable=g-import-not-at-top
  k, s, pad = conv["kernel"], conv["stride"], conv["kernel"] // 2
  x = torch.randn(batch, conv["cin"], conv["spatial"], conv["spatial"], requires_grad=True)
  w = (torch.randn(conv["cout"], conv["cin"], k, k) * 0.01).requires_grad_(True)

  def forward():
    with torch.no_grad():
      torch.nn.functional.conv2d(x, w, stride=s, padding=pad)

  def grad(wrt):
    y = torch.nn.functional.conv2d(x, w, stride=s, padding=pad)
    cot = torch.ones_like(y)

    def run():
      torch.autograd.grad(y, wrt, cot, retain_graph=True)
    return run

  return {"forward": forward, "input_grad": grad(x), "weight_grad": grad(w)}


def matmul_rate(framework: str, n: int = 2048, reps: int = 5) -> float:
  """float32 GFLOP/s of an (n x n) @ (n x n) matmul: the machine's dense compute rate."""
  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  if framework == "torch":
    import torch  # pylint: disable=g-import-not-at-top
    ta = torch.from_numpy(a)
    seconds = _median_seconds(lambda: ta @ ta, reps)
  else:
    import jax  # pylint: disable=g-import-not-at-top
    ja = jax.numpy.asarray(a)
    mm = jax.jit(lambda a: a @ a)
    seconds = _median_seconds(lambda: mm(ja).block_until_ready(), reps)
  return 2 * n ** 3 / seconds / 1e9


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--framework", choices=("jax", "torch"), default="jax")
  parser.add_argument("--variant", choices=("xla", "patches", "shifts"), default="xla")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--only", default="", help="comma-separated kernel sizes to keep")
  args = parser.parse_args()
  name = "torch" if args.framework == "torch" else f"jax-{args.variant}"
  totals = {"forward": 0.0, "input_grad": 0.0, "weight_grad": 0.0}
  kernels = {int(k) for k in args.only.split(",") if k}
  for conv in resnet50_convs(args.size):
    if kernels and conv["kernel"] not in kernels:
      continue
    timers = (torch_timers(conv, args.batch) if args.framework == "torch"
              else jax_timers(conv, args.batch, args.variant))
    row = dict(what="conv", framework=name, batch=args.batch, **conv)
    for pass_name, fn in timers.items():
      seconds = _median_seconds(fn, args.reps)
      row[f"{pass_name}_ms"] = round(1e3 * seconds, 3)
      row[f"{pass_name}_gflops_per_s"] = round(2 * conv_macs(conv, args.batch) / seconds / 1e9, 1)
      totals[pass_name] += conv["count"] * seconds
    print(json.dumps(row), flush=True)
  print(json.dumps({"what": "total", "framework": name, "batch": args.batch, "size": args.size,
                    **{f"{k}_s": round(v, 3) for k, v in totals.items()},
                    "all_s": round(sum(totals.values()), 3)}), flush=True)
  print(json.dumps({"what": "matmul", "framework": name, "n": 2048,
                    "gflops_per_s": round(matmul_rate(args.framework), 1)}), flush=True)


if __name__ == "__main__":
  main()
