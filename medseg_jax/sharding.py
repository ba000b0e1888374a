"""Device mesh and data placement for data- (and depth-) parallel training.

By default one mesh axis, ``"data"``, spans every device of every process.
Parameters and optimizer state are replicated (``P()``); batches are split
along their leading axis (``P("data")``). XLA's SPMD partitioner inserts the
gradient all-reduce, so the train step is written as if for one device.

A config may ask for a second axis, ``"spatial"``:
``config.mesh = dict(data=-1, spatial=4)`` (``-1``: all remaining devices).
Then 3-D batches ``[B, D, H, W, C]`` are split over ``("data",
"spatial")``, i.e. the depth of every volume is spread over the ``spatial``
devices, and the models keep their activations split the same way
(``constrain``, applied at block boundaries), so one volume's activations
need not fit on one device. The ``spatial`` axis is innermost, so its
devices belong to one process when the mesh is built over all devices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
SPATIAL_AXIS = "spatial"
MESH_AXES = (DATA_AXIS, SPATIAL_AXIS)


def mesh_shape(
  axes: Mapping[str, int] | None, num_devices: int
) -> dict[str, int]:
  """Resolves ``config.mesh`` into axis sizes whose product is the device
  count.

  Args:
    axes: e.g. ``{"data": -1, "spatial": 2}``; keys from ``MESH_AXES``, in
      that order of nesting; at most one ``-1`` (the remaining devices); a
      missing axis has size 1. ``None`` or empty: ``{"data": -1}``.
    num_devices: devices the mesh spans.

  Returns:
    Axis name -> size, outermost first. Axes of size 1 other than ``data``
    are dropped, so ``{"data": -1, "spatial": 1}`` is the plain 1-D data
    mesh.

  Raises:
    ValueError: for unknown axis names or sizes that do not multiply to
      ``num_devices``.
  """
  axes = dict(axes.items()) if axes else {}
  if not axes:
    return {DATA_AXIS: num_devices}
  unknown = set(axes) - set(MESH_AXES)
  if unknown:
    raise ValueError(
      f"Unknown mesh axes {sorted(unknown)}; valid: {list(MESH_AXES)}."
    )
  sizes = {name: int(axes.get(name, 1)) for name in MESH_AXES}
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1 or any(s < 1 and s != -1 for s in sizes.values()):
    raise ValueError(
      f"mesh={dict(axes)}: sizes must be positive, with at most one -1."
    )
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(
        f"mesh={dict(axes)} does not divide the {num_devices} devices."
      )
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(
      f"mesh={dict(axes)} has {math.prod(sizes.values())} devices; there "
      f"are {num_devices}. Use -1 for one axis to take the rest."
    )
  return {n: s for n, s in sizes.items() if n == DATA_AXIS or s > 1}


def make_mesh(
  devices: list[jax.Device] | None = None,
  axes: Mapping[str, int] | None = None,
) -> Mesh:
  """Returns the training mesh over all (or the given) devices.

  Args:
    devices: the devices; default ``jax.devices()`` (every process's).
    axes: ``config.mesh``; see ``mesh_shape``. Default: one ``"data"`` axis.

  The axis types are ``Auto`` so that the compiler, not the type system,
  propagates shardings through the model (``jax.make_mesh`` now defaults to
  ``Explicit``).
  """
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(axes, len(devices))
  return jax.make_mesh(
    tuple(shape.values()),
    tuple(shape),
    axis_types=(AxisType.Auto,) * len(shape),
    devices=devices,
  )


def local_mesh(mesh: Mesh) -> Mesh:
  """A mesh of the same axes over this process's devices only.

  The ``spatial`` axis keeps its size; ``data`` takes the rest. Evaluation
  runs on it, so that each process scores its own cases without waiting for
  the others.
  """
  if jax.process_count() == 1:
    return mesh
  axes = {
    name: -1 if name == DATA_AXIS else size for name, size in mesh.shape.items()
  }
  return make_mesh(jax.local_devices(), axes)


def axis_size(mesh: Mesh, name: str) -> int:
  """Size of axis ``name``, 1 if the mesh does not have it."""
  return dict(mesh.shape).get(name, 1)


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that places a full copy on every device."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def batch_partition(mesh: Mesh, spatial_dims: int) -> tuple[str, ...]:
  """Mesh axes of an input batch's leading axes: ``("data",)``, or
  ``("data", "spatial")`` for 3-D data on a mesh with a ``spatial`` axis
  of size > 1 (the depth axis is split)."""
  if spatial_dims == 3 and axis_size(mesh, SPATIAL_AXIS) > 1:
    return (DATA_AXIS, SPATIAL_AXIS)
  return (DATA_AXIS,)


def batch_sharding(mesh: Mesh, spatial_dims: int = 2) -> NamedSharding:
  """Sharding of input batches (see ``batch_partition``)."""
  return NamedSharding(mesh, P(*batch_partition(mesh, spatial_dims)))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Returns the per-process batch size, or raises if it does not divide.

  The batch is split over the ``data`` axis only; every process must hold
  whole rows, so the ``data`` axis must also be a multiple of the number of
  processes (a ``spatial`` axis never crosses processes).
  """
  num_data = axis_size(mesh, DATA_AXIS)
  if num_data % jax.process_count():
    raise ValueError(
      f"The data axis ({num_data}) must be a multiple of the number of "
      f"processes ({jax.process_count()}); make the spatial axis at most the "
      "devices of one process."
    )
  if global_batch_size % num_data:
    raise ValueError(
      f"batch_size={global_batch_size} must be a multiple of the data axis "
      f"({num_data} devices); try "
      f"{max(num_data, global_batch_size // num_data * num_data)}."
    )
  return global_batch_size // jax.process_count()


def to_global_batch(
  local_batch: dict[str, np.ndarray], mesh: Mesh, spatial_dims: int = 2
) -> dict[str, jax.Array]:
  """Assembles process-local numpy batches into one global sharded array.

  Args:
    local_batch: this process's rows of the global batch, e.g.
      ``image: f32[B_local, H, W, C]``; process ``p`` holds rows
      ``p * B_local, ..., (p + 1) * B_local - 1``.
    mesh: the training mesh.
    spatial_dims: 3 splits the depth axis over ``spatial`` too.

  Returns:
    The same pytree of ``jax.Array`` with global leading dimension
    ``B_local * process_count``, sharded ``P("data")`` or ``P("data",
    "spatial")``.
  """
  sharding = batch_sharding(mesh, spatial_dims)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
    local_batch,
  )


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of host or device arrays replicated on the mesh."""
  return jax.device_put(tree, replicated(mesh))


def to_local(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree replicated on a multi-process mesh onto ``mesh`` (a
  ``local_mesh``), from this process's own copy; no communication."""
  if jax.process_count() == 1:
    return tree
  return jax.device_put(
    jax.tree.map(lambda x: x.addressable_data(0), tree), replicated(mesh)
  )


def constrain(
  x: jax.Array, partition: tuple[str | None, ...] | None
) -> jax.Array:
  """Asks XLA to keep ``x`` split over mesh axes along its leading axes.

  Used by the models at block boundaries, e.g. ``partition=("data",
  "spatial")`` keeps ``f32[B, D, H, W, C]`` activations split over batch
  and depth, so that the convolutions run on depth slabs (XLA exchanges the
  halo voxels at the slab borders).

  An axis is left unconstrained (``None``) when the context mesh (``with
  jax.set_mesh(mesh)``) has no such axis or it does not divide that
  dimension (deep levels of a small patch); with no context mesh, or
  ``partition=None``, ``x`` is returned unchanged, so models run the same
  outside the trainer.

  Args:
    x: ``f[B, *S, C]``.
    partition: mesh axis names (or ``None``) for the leading axes of ``x``.

  Returns:
    ``x``, with a sharding constraint.
  """
  if not partition:
    return x
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  sizes = dict(mesh.shape)
  spec = []
  for dim, name in zip(x.shape[: len(partition)], partition, strict=True):
    ok = name in sizes and sizes[name] > 1 and dim % sizes[name] == 0
    spec.append(name if ok else None)
  if not any(spec):
    return x
  return jax.lax.with_sharding_constraint(x, P(*spec))
