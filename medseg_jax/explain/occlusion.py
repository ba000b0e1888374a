"""Occlusion sensitivity, every occluded copy evaluated in device batches.

A box of `window` voxels slides over the image with step `stride`; at each
position the box is filled with `fill` and the drop of the target score is
recorded:

  drop_p = S(x) - S(x with box p filled)

The map at a voxel is the mean drop over the boxes that cover it (positive:
hiding that part lowers the score; the region is the clean image's). The
boxes tile every axis, the last one ending at the border. All occluded
copies are built on the device from the box corners and go through the
network `batch_size` positions at a time, stacked along the batch axis
(`batching.map_in_chunks`), in one jitted computation; the per-voxel means
are one contraction of the drops with the boxes' per-axis indicators.
MONAI's `OcclusionSensitivity` builds each copy in Python and accepts one
image at a time.

For networks made of local operations (`UNet` with batch norm or none)
each copy recomputes only the activations its box can change
(`explain.incremental`, after Krypton, Nakandala et al. 2019): the same
map, a fraction of the work. `incremental=False` forces the full path.

Reference: M. D. Zeiler, R. Fergus. "Visualizing and Understanding
Convolutional Networks". ECCV 2014. https://arxiv.org/abs/1311.2901
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medseg_jax.explain import batching
from medseg_jax.explain import incremental as incremental_lib
from medseg_jax.explain import targets

FILLS = ("mean",)


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple:
  if isinstance(value, Sequence):
    value = tuple(int(v) for v in value)
    if len(value) != ndim:
      raise ValueError(f"{name} needs {ndim} entries, got {value}.")
    return value
  return (int(value),) * ndim


def box_starts(size: int, window: int, stride: int) -> list[int]:
  """Starts of the boxes along one axis: `0, stride, ...`, plus one that
  ends at the border if the steps miss it (a box larger than the axis is
  cut to the axis)."""
  window = min(window, size)
  starts = list(range(0, size - window + 1, stride))
  if starts[-1] != size - window:
    starts.append(size - window)
  return starts


def occlusion_boxes(
  spatial: Sequence[int],
  window: int | Sequence[int],
  stride: int | Sequence[int] | None = None,
) -> tuple[np.ndarray, tuple[int, ...]]:
  """All box corners `i32[N, d]` (last axis fastest) and the box size."""
  spatial = tuple(int(s) for s in spatial)
  window = _per_axis(window, len(spatial), "window")
  stride = window if stride is None else stride
  stride = _per_axis(stride, len(spatial), "stride")
  if min(window) < 1 or min(stride) < 1:
    raise ValueError(f"window {window} and stride {stride} must be >= 1.")
  window = tuple(min(w, s) for w, s in zip(window, spatial, strict=True))
  per_axis = [
    box_starts(s, w, t) for s, w, t in zip(spatial, window, stride, strict=True)
  ]
  grids = np.meshgrid(*per_axis, indexing="ij")
  corners = np.stack([g.ravel() for g in grids], axis=-1).astype(np.int32)
  return corners, window


def occlusion(
  model: nn.Module,
  variables: Any,
  image: jax.typing.ArrayLike,
  target: targets.Target,
  *,
  window: int | Sequence[int] = 16,
  stride: int | Sequence[int] | None = 8,
  fill: float | str = 0.0,
  batch_size: int | None = 16,
  incremental: bool | None = None,
) -> jax.Array:
  """Occlusion sensitivity map (see the module docstring).

  Args:
    model: a segmentation model, `f32[B, *S, C] -> f32[B, *S, K]` logits.
    variables: its variables.
    image: `f32[B, *S, C]`.
    target: the class and region scored.
    window: box size, one int or one per spatial axis.
    stride: step between boxes; `None` means `window` (no overlap).
    fill: the value inside the box, or `"mean"` for each example's mean.
    batch_size: box positions per network call (each call sees
      `batch_size * B` images); `None`: all at once.
    incremental: recompute only what each box changes (`None`: whenever
      the model allows it, see `explain.incremental`; `True` raises a
      ValueError for a model that does not).

  Returns:
    `f32[B, *S]`: the mean score drop of the boxes covering each voxel.
    With one box covering the whole image, every voxel holds
    `S(x) - S(fill image)`.
  """
  image = jnp.asarray(image, jnp.float32)
  spatial = tuple(image.shape[1:-1])
  d = len(spatial)
  corners, window = occlusion_boxes(spatial, window, stride)
  if isinstance(fill, str):
    if fill not in FILLS:
      raise ValueError(f"Unknown fill {fill!r}; a number or one of {FILLS}.")
    axes = tuple(range(1, image.ndim))
    fill_value = image.mean(axis=axes, keepdims=True)
  else:
    fill_value = jnp.full((1,) * image.ndim, fill, jnp.float32)

  ops = incremental_lib.graph_of(model)
  if incremental and ops is None:
    raise ValueError(
      f"incremental occlusion needs a UNet with norm in "
      f"{incremental_lib.LOCAL_NORMS} (local operations only); got "
      f"{type(model).__name__}"
      + (f" with norm={model.norm!r}" if hasattr(model, "norm") else "")
      + ". Use incremental=None or False for the full path."
    )
  multiple = model.input_multiple() if ops else 1
  fits = all(s % multiple == 0 for s in spatial) or getattr(
    model, "pad_input", False
  )
  if ops is not None and incremental is not False and fits:
    drops = _incremental_drops(
      ops,
      model,
      variables,
      image,
      target,
      corners,
      window,
      fill_value,
      batch_size,
    )
    return _mean_over_boxes(drops, corners, window, spatial)

  logits = targets.forward(model, variables, image)
  region = targets.region_mask(logits, target)
  clean = targets.score(logits, region, target)

  def drops_of(chunk):  # i32[k, d] -> f32[k, B]
    inside = None
    for a, s in enumerate(spatial):
      index = jnp.arange(s)[None, :]
      axis = (index >= chunk[:, a : a + 1]) & (
        index < chunk[:, a : a + 1] + window[a]
      )
      axis = axis.reshape((len(chunk),) + (1,) * a + (s,) + (1,) * (d - a - 1))
      inside = axis if inside is None else inside & axis
    occluded = jnp.where(inside[:, None, ..., None], fill_value, image[None])
    k = len(chunk)
    tiled = jnp.broadcast_to(region, (k, *region.shape))
    scores = targets.score_of(
      model,
      variables,
      batching.stack_batch(occluded),
      target,
      batching.stack_batch(tiled),
    )
    return clean[None] - batching.unstack_batch(scores, k)

  drops = batching.map_in_chunks(
    drops_of, jnp.asarray(corners), batch_size
  )  # [N, B]
  return _mean_over_boxes(drops, corners, window, spatial)


def _incremental_drops(
  ops, model, variables, image, target, corners, window, fill_value, batch_size
) -> jax.Array:
  """`f32[N, B]` score drops, each copy through `explain.incremental`."""
  batch, spatial, channels = image.shape[0], image.shape[1:-1], image.shape[-1]
  multiple = model.input_multiple()
  padded = tuple(-(-s // multiple) * multiple for s in spatial)
  # As the model's own pad_input: zeros after the end of each axis.
  pads = [(0, 0)] + [(0, p - s) for p, s in zip(padded, spatial, strict=True)]
  variables = {
    k: v for k, v in variables.items() if k in ("params", "batch_stats")
  }
  clean = incremental_lib.run_full(
    ops, variables, jnp.pad(image, pads + [(0, 0)]), model.dtype
  )
  logits = clean["logits"].astype(jnp.float32)
  crop = tuple(slice(0, s) for s in spatial)
  region = targets.region_mask(logits[(slice(None), *crop)], target)
  region = jnp.pad(region, pads)
  # The class logit inside the region; 0 elsewhere (pad included).
  base = (logits[..., target.class_index] * region)[..., None]
  layout = incremental_lib.plan_layout(
    ops, incremental_lib.tensor_shapes(clean), corners, window
  )
  items = dict(
    starts={n: jnp.asarray(v, jnp.int32) for n, v in layout.starts.items()},
    crops={n: jnp.asarray(v, jnp.int32) for n, v in layout.crop_starts.items()},
  )
  fill = jnp.broadcast_to(fill_value, (batch, *window, channels))
  size = layout.sizes["logits"]

  def drops_of(chunk):  # starts and crops of k boxes -> f32[k, B]
    k = chunk["starts"]["x"].shape[0]
    rows = jnp.tile(jnp.arange(batch), k)  # copy = box-major, example-minor
    copies = jax.tree.map(lambda a: jnp.repeat(a, batch, axis=0), chunk)
    patch = incremental_lib.occluded_logits(
      ops,
      variables,
      clean,
      layout,
      rows,
      copies,
      jnp.tile(fill, (k,) + (1,) * (fill.ndim - 1)),
    )
    start = copies["starts"]["logits"]
    weights = incremental_lib.take(region[..., None], rows, start, size)
    before = incremental_lib.take(base, rows, start, size)
    after = patch[..., target.class_index : target.class_index + 1] * weights
    drops = (before - after).reshape(k * batch, -1).sum(axis=1)
    return drops.reshape(k, batch)

  return batching.map_in_chunks(drops_of, items, batch_size)


def _mean_over_boxes(drops, corners, window, spatial) -> jax.Array:
  """Per voxel, the mean of `drops` `f32[N, B]` over the boxes covering it."""
  d = len(spatial)
  # Per-axis indicators of every box, f32[N, s_a].
  indicators = [
    (
      (np.arange(s)[None, :] >= corners[:, a : a + 1])
      & (np.arange(s)[None, :] < corners[:, a : a + 1] + window[a])
    ).astype(np.float32)
    for a, s in enumerate(spatial)
  ]
  letters = string.ascii_lowercase[:d]
  spec = ",".join(["nz"] + [f"n{c}" for c in letters]) + f"->z{letters}"
  total = jnp.einsum(spec, drops, *indicators)
  count_spec = ",".join(f"n{c}" for c in letters) + f"->{letters}"
  count = jnp.einsum(count_spec, *indicators)
  return total / count[None]
