"""Generates tests/support/files/simclr_3_steps.npz with the pre-carve-out code (commit 7ea9cb0).

The `<tag>/step1/...` keys (the model after the first step) were added on 2026-12-02 by
this script, run at 7ea9cb0 on another machine than the rest; the other keys are the
original run's."""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, "/work/main")
import jax
import numpy as np

jax.config.update("jax_platforms", "cpu")
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from simclr_jax import train_state
from simclr_jax.training import pretrain_step
from tests.support.helpers import tiny_food101_config

out = {}
for separately in (False, True):
  config = tiny_food101_config()
  config.model.forward_views_separately = separately
  config.optimizer.warmup_epochs = 0.0
  config.online_probe = True
  rng = np.random.default_rng(0)
  views = rng.integers(0, 256, size=(3, 16, 2, 16, 16, 3), dtype=np.uint8)
  labels = rng.integers(0, 101, size=(3, 16), dtype=np.int32)
  mesh = train_state.create_mesh()
  tx, schedule = train_state.create_optimizer(config, 10, 100)
  state = train_state.init_train_state(config, tx, mesh, 101)
  step = pretrain_step.compile_train_step(config, train_state.model_graphdef(config, 101), tx, schedule, mesh)
  tag = "separately" if separately else "together"
  losses = []
  for v, l in zip(views, labels):
    state, metrics = step(state, {"views": jax.device_put(v, NamedSharding(mesh, P("data"))),
                                  "label": jax.device_put(l, NamedSharding(mesh, P("data")))})
    m = jax.device_get(metrics)
    losses.append([m["loss"], m["probe_loss"], m["grad_norm"]])
    if len(losses) == 1:  # The model after the first step too (added 2026-12-02).
      first = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
      for k, v in traverse_util.flatten_dict(first).items():
        out[f"{tag}/step1/" + "/".join(map(str, k))] = np.asarray(v)
  out[f"{tag}/metrics"] = np.array(losses, np.float32)
  model = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  for k, v in traverse_util.flatten_dict(model).items():
    k = "/".join(map(str, k))
    out[f"{tag}/{k}"] = np.asarray(v)
  print(tag, losses)
np.savez_compressed("/work/main/tests/support/files/simclr_3_steps.npz", **out)
print(len(out), sum(v.size for v in out.values()))
