"""grain input pipelines over TFDS ArrayRecord data sources.

Training: ``MapDataset`` over ``tfds.data_source`` -> seeded shuffle (a new
order each epoch) -> infinite repeat -> per-example transforms -> this
process's rows -> batch -> (with ``config.augment_on="host"``) the JAX
augmentations of ``config.augment`` on the CPU -> (for a boundary loss)
signed distance maps of the labels -> iterator. Everything is a
pure function of the seed and the position, so the iterator state (a few
integers) is all that a checkpoint needs to resume the exact batch sequence.

With several processes, global batch ``b`` is positions ``b * B, ...,
(b + 1) * B - 1`` of that stream, and process ``p`` reads (and transforms)
only its block of ``B / P`` rows of it. Random transforms draw from the
stream position, not from the process's own count, so ``P`` processes
train on exactly the batches that one process would (see
``ProcessRows``).

Evaluation: cases in order (process ``p`` of ``P`` takes cases ``p, p + P,
...``), normalised and padded, batched with a validity flag so that a last
partial batch can be padded to a fixed shape.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from medseg_jax import losses
from medseg_jax.augment import host as host_augment
from medseg_jax.data import distance as distance_lib
from medseg_jax.data import registry
from medseg_jax.data import transforms as transforms_lib


def train_dataset(
  config: ml_collections.ConfigDict,
  data_dir: str,
  *,
  local_batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.IterDataset:
  """Infinite, shuffled, transformed and batched training dataset.

  Each batch is ``image: f32[B_local, *S, C]``, ``label: i32[B_local, *S]``
  and ``mask: f32[B_local, *S]``, plus ``distance: f32[B_local, *S,
  num_classes]`` (:mod:`medseg_jax.data.distance`) when ``config.loss``
  has a boundary term.

  Raises:
    ValueError: for an empty split, a bad ``config.augment_on``, a bad
      ``config.augment`` list, or geometric augmentations on the device
      with a loss that needs distance maps.
  """
  process_index = (
    jax.process_index() if process_index is None else process_index
  )
  process_count = (
    jax.process_count() if process_count is None else process_count
  )
  # The boundary loss reads signed distance maps of the labels.
  distance_maps = "distance" in losses.from_config(config.loss).inputs
  if distance_maps:
    distance_lib.check_config(config)
  augment = host_augment.from_config(
    config,
    local_batch_size=local_batch_size,
    process_index=process_index,
    process_count=process_count,
  )
  source = registry.data_source(
    config.dataset,
    config.train_split,
    data_dir,
    manual_dir=config.get("manual_dir"),
  )
  if len(source) == 0:
    raise ValueError(
      f"Split {config.train_split!r} of {config.dataset!r} is empty."
    )
  ds = grain.MapDataset.source(source)
  percent = config.data.get("train_percent", 100)
  if percent < 100:
    # The first cases, so that smaller shares are subsets of larger ones.
    ds = ds[: max(1, round(len(source) * percent / 100))]
  ds = ds.seed(config.seed)
  ds = ds.shuffle().repeat()
  specs = []
  for spec in config.data.train_transforms:
    spec = dict(spec)
    if spec.get("op") == "random_crop_or_pad" and "size" not in spec:
      spec["size"] = tuple(config.data.patch_size)
    specs.append(spec)
  for transform in transforms_lib.build(specs):
    if isinstance(transform, grain.transforms.RandomMap):
      ds = ds.random_map(transform)
    else:
      ds = ds.map(transform)
  ds = ds.map(transforms_lib.ToModelInputs())
  # After the transforms, so their random draws follow the stream position.
  # Lazy: only this process's rows are read and transformed.
  ds = ProcessRows(ds, local_batch_size, process_index, process_count)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  if augment is not None:
    # After batching: batch i is train step i, whose key the augmentation
    # uses, so a restored iterator replays the same augmented batches.
    ds = ds.map_with_index(augment)
  if distance_maps:
    # Last, after everything on the host that moves the label (crop, pad,
    # host augmentation), so the maps describe the trained-on label.
    ds = ds.map(
      distance_lib.SignedDistanceMaps(
        registry.get_dataset_spec(
          config.dataset, config.get("manual_dir")
        ).num_classes
      )
    )
  read_options = grain.ReadOptions(
    num_threads=config.data.get("read_threads", 2),
    prefetch_buffer_size=config.data.get("prefetch_buffer_size", 8),
  )
  iter_ds = ds.to_iter_dataset(read_options)
  workers = config.data.get("worker_count", 0)
  if workers:
    iter_ds = iter_ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers),
      worker_init_fn=host_augment.cpu_only_worker if augment else None,
    )
  return iter_ds


class ProcessRows(grain.MapDataset):
  """This process's rows of every global batch of a (repeated) stream.

  Element ``i`` of process ``p`` (of ``P``, ``B_local`` rows each) is
  element ``(i // B_local) * B_local * P + p * B_local + i % B_local`` of
  the parent: batching the result by ``B_local`` gives process ``p`` the
  ``p``-th block of rows of each global batch of ``B_local * P``.
  """

  _MUTATES_ELEMENT_SPEC = False

  def __init__(
    self,
    parent: grain.MapDataset,
    local_batch_size: int,
    process_index: int,
    process_count: int,
  ):
    super().__init__(parent)
    if not 0 <= process_index < process_count:
      raise ValueError(f"process {process_index} of {process_count}?")
    self._rows = local_batch_size
    self._index = process_index
    self._count = process_count

  def __len__(self) -> int:
    return len(self._parent) // self._count

  def _parent_index(self, index: int) -> int:
    batch, row = divmod(index, self._rows)
    return (batch * self._count + self._index) * self._rows + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def __str__(self) -> str:
    return (
      f"ProcessRows(rows={self._rows}, process={self._index}/{self._count})"
    )


def eval_examples(
  config: ml_collections.ConfigDict,
  data_dir: str,
  split: str,
  *,
  pad_multiple: int,
  process_index: int = 0,
  process_count: int = 1,
  corrupt: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> Iterator[dict[str, Any]]:
  """Yields evaluation examples in order, normalised and padded.

  Each example keeps ``case_id`` (str), ``spacing`` and the unpadded
  ``shape`` so predictions can be cropped back. With ``process_count > 1``
  only cases ``process_index, process_index + process_count, ...`` are read
  (``evaluator.gather`` puts the results back in order). ``corrupt(image,
  index)``, if given, replaces each raw image (``f32[*S, C]``, as read,
  before normalisation, as a scanner would degrade it) of the case at
  position ``index`` of the split; ``raw_image`` is then the corrupted one.
  """
  source = registry.data_source(
    config.dataset, split, data_dir, manual_dir=config.get("manual_dir")
  )
  specs = [s for s in config.data.train_transforms if s["op"] == "normalize"]
  normalize = transforms_lib.build(specs)
  pad = transforms_lib.CenterPad(multiple=pad_multiple)
  for index in range(process_index, len(source), process_count):
    raw = source[index]
    if corrupt is not None:
      image = corrupt(np.asarray(raw["image"], np.float32), index)
      raw = {**raw, "image": np.asarray(image, np.float32)}
    example = dict(raw)
    for transform in normalize:
      example = transform.map(example)
    shape = tuple(np.asarray(raw["label"]).shape)
    example = pad.map(example)
    case_id = raw.get("case_id", str(index))
    if isinstance(case_id, bytes):
      case_id = case_id.decode()
    yield {
      "image": np.asarray(example["image"], np.float32),
      "label": np.asarray(example["label"], np.int32),
      "mask": np.asarray(example["mask"], np.float32),
      "raw_image": np.asarray(raw["image"], np.float32),
      "shape": shape,
      "spacing": np.asarray(raw.get("spacing", np.ones(len(shape))), float),
      "case_id": str(case_id),
    }
