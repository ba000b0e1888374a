"""Running the augmentations on the host, in the grain input pipeline.

``config.augment_on`` says where the ops of ``config.augment`` run:

* ``"device"`` (default): inside the jitted train step, on the training
  devices, fused with the model.
* ``"host"``: in the grain pipeline, after batching, on the CPU device of
  the process (in the worker processes when ``config.data.worker_count``
  > 0), leaving the accelerator to the model.

Both run the same functions with the same keys. Train step ``t`` consumes
batch ``t`` of the stream, and in either place that batch is augmented
with::

  step_rng = jax.random.split(jax.random.key(seed))[1]
  _, key = jax.random.split(jax.random.fold_in(step_rng, t))
  keys = jax.random.split(key, global_batch_size)    # one per example

(the trainer's derivation; this process's rows take their slice of
``keys``). The key is a function of the seed and the position in the data
stream only, so a resumed run, whose grain iterator state comes back from
the checkpoint, sees the same augmented batches. The geometric ops move
image, label and mask together; labels stay integers from the input's set
(nearest neighbour), plus 0 where a voxel comes from outside the input.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from medseg_jax.augment import registry

AUGMENT_ON = ("device", "host")


def check_augment_on(value: Any) -> str:
  """Returns ``value`` if it is a valid ``config.augment_on``, else raises.

  Args:
    value: ``"device"`` or ``"host"``.

  Returns:
    ``value``.

  Raises:
    ValueError: for anything else, listing the valid values.
  """
  if value not in AUGMENT_ON:
    raise ValueError(
      f"config.augment_on={value!r} is not valid; use 'device' (augment "
      "inside the jitted train step) or 'host' (augment in the grain input "
      "pipeline, on the CPU)."
    )
  return value


def step_key(seed: int, step: jax.typing.ArrayLike) -> jax.Array:
  """The augmentation key of train step ``step`` of a run seeded ``seed``.

  The same derivation as the trainer's: the step key is
  ``fold_in(split(key(seed))[1], step)``, split once into a dropout key and
  this key.

  Args:
    seed: ``config.seed``.
    step: the train step, i.e. the batch's position in the data stream.

  Returns:
    A typed PRNG key for the whole global batch.
  """
  step_rng = jax.random.split(jax.random.key(seed))[1]
  _, key = jax.random.split(jax.random.fold_in(step_rng, step))
  return key


@functools.lru_cache(maxsize=None)
def _compiled(
  augment: registry.Augment, seed: int, global_batch_size: int, first_row: int
):
  """The jitted batch augmentation: ``(step: i32[], arrays) -> arrays``.

  Built once per pipeline and process; ``jax.jit`` then compiles once per
  batch shape. The step is a traced argument, so a new step does not
  recompile.
  """

  def run(step, arrays):
    keys = jax.random.split(step_key(seed, step), global_batch_size)
    rows = arrays["image"].shape[0]
    keys = keys[first_row : first_row + rows]
    return jax.vmap(augment.augment_example)(keys, arrays)

  return jax.jit(run)


@dataclasses.dataclass(frozen=True)
class HostAugment(grain.transforms.MapWithIndex):
  """Augments batch ``index`` of the stream on the CPU (a grain transform).

  Picklable (an :class:`~medseg_jax.augment.Augment` and three ints), so
  grain can ship it to worker processes; the jitted function is built
  lazily in whichever process runs it.

  Attributes:
    augment: the validated ops.
    seed: the run seed (``config.seed``).
    global_batch_size: rows of the global batch (every process).
    first_row: this process's first row in the global batch.
  """

  augment: registry.Augment
  seed: int
  global_batch_size: int
  first_row: int = 0

  def map_with_index(
    self, index: int, batch: Mapping[str, Any]
  ) -> dict[str, Any]:
    """Augments one batch.

    Args:
      index: the batch's position in this process's stream (= train step).
      batch: ``image: f32[B, *S, C]``, ``label: i32[B, *S]``, ``mask:
        f32[B, *S]`` as numpy arrays; other keys pass through.

    Returns:
      The batch with augmented numpy ``image``, ``label`` and ``mask``
      (shapes and dtypes kept).
    """
    cpu = jax.devices("cpu")[0]
    arrays = {
      name: jax.device_put(np.asarray(batch[name]), cpu)
      for name in registry.SPATIAL_KEYS
      if name in batch
    }
    step = jax.device_put(np.int32(index), cpu)
    run = _compiled(
      self.augment, self.seed, self.global_batch_size, self.first_row
    )
    out = jax.device_get(run(step, arrays))
    return {**batch, **{name: np.asarray(x) for name, x in out.items()}}


def from_config(
  config: ml_collections.ConfigDict,
  *,
  local_batch_size: int,
  process_index: int,
  process_count: int,
) -> HostAugment | None:
  """The host transform for a config, or None when it augments on device.

  Args:
    config: reads ``augment``, ``augment_on``, ``seed`` and
      ``data.patch_size``.
    local_batch_size: rows per batch in this process.
    process_index: this process.
    process_count: number of processes.

  Returns:
    A :class:`HostAugment`, or None if ``augment_on`` is ``"device"`` or
    the list is empty.

  Raises:
    ValueError: for a bad ``augment_on`` or a bad augmentation list.
  """
  where = check_augment_on(config.get("augment_on", "device"))
  specs = list(config.get("augment", None) or [])
  if where != "host" or not specs:
    return None
  augment = registry.build(specs, spatial_shape=config.data.patch_size)
  return HostAugment(
    augment,
    seed=int(config.seed),
    global_batch_size=local_batch_size * process_count,
    first_row=local_batch_size * process_index,
  )


def cpu_only_worker(worker_index: int, worker_count: int) -> None:
  """grain ``worker_init_fn``: JAX in an input worker uses the CPU only.

  Without it, a worker's first JAX call would initialise every backend,
  and on a GPU host each worker would reserve accelerator memory.
  """
  del worker_index, worker_count
  jax.config.update("jax_platforms", "cpu")
