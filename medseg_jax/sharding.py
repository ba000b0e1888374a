"""Device mesh and data placement for data-parallel training.

One mesh axis, ``"data"``, spans every device of every process. Parameters
and optimizer state are replicated (``P()``); batches are split along their
leading axis (``P("data")``). XLA's SPMD partitioner inserts the gradient
all-reduce, so the train step is written as if for one device.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """Returns a 1-D mesh over all (or the given) devices, axis ``"data"``.

  The axis type is ``Auto`` so that the compiler, not the type system,
  propagates shardings through the model (``jax.make_mesh`` now defaults to
  ``Explicit``).
  """
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh(
    (len(devices),),
    (DATA_AXIS,),
    axis_types=(AxisType.Auto,),
    devices=devices,
  )


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that places a full copy on every device."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Returns the per-process batch size, or raises if it does not divide."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(
      f"batch_size={global_batch_size} must be a multiple of the number of "
      f"devices ({num_devices}); try "
      f"{max(num_devices, global_batch_size // num_devices * num_devices)}."
    )
  return global_batch_size // jax.process_count()


def to_global_batch(
  local_batch: dict[str, np.ndarray], mesh: Mesh
) -> dict[str, jax.Array]:
  """Assembles process-local numpy batches into one global sharded array.

  Args:
    local_batch: this process's rows of the global batch, e.g.
      ``image: f32[B_local, H, W, C]``.
    mesh: the training mesh.

  Returns:
    The same pytree of ``jax.Array`` with global leading dimension
    ``B_local * process_count``, sharded ``P("data")``.
  """
  sharding = data_sharded(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
    local_batch,
  )


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of host or device arrays replicated on the mesh."""
  return jax.device_put(tree, replicated(mesh))
