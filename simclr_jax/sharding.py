"""The device mesh: one 'data' axis over every device of every process."""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh over every device of every process (or over `devices`: a TPU topology's,
  for an ahead-of-time compile), axis 'data'.

  Auto axes: the compiler propagates the batch sharding through the model (GSPMD), so
  BatchNorm's batch means become global all-reduces without any annotation.
  """
  count = jax.device_count() if devices is None else len(devices)
  return jax.make_mesh((count,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, optimiser state, metrics)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))
