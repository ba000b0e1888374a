"""Incremental occlusion: each occluded copy recomputes only what its box
changes.

A box changes the input only inside itself. Through a network made of
local operations (convolutions, batch norm in evaluation mode, ReLU,
pooling, up-convolutions, concatenation) the change spreads by each
operation's halo, halves at each pooling and doubles at each upsampling;
outside that region every activation of the occluded copy equals the
clean image's. So the clean activations are computed once, and each copy
carries, per layer, only a *patch*: the region its box can have changed.
An operation is applied to a crop of its clean input with the input's
patch pasted in, and the part of the result that the box can change is the
next patch. The network's own modules are applied to the crops, so
padding at the image border is the network's own; crops stay inside the
image, and a crop edge inside the image lies a halo away from the patch
it produces, so every patch value is exact (tested equal to the batched
full-image path). The score drop of a copy is the region's logit
difference over the final patch alone.

The cost follows the patches: on a 4-level U-Net at 256x256, 32x32 boxes
change about a tenth of the activations a full pass computes, mostly in
the decoder, whose patches span the deepest level's receptive field.

Models: `UNet` (2-D and 3-D, plain or residual blocks, transposed or
resize up-convolutions, any depth and widths) with batch norm or no
normalisation. Instance and group norm are not local (one box moves the
statistics of the whole image), so such models, and other architectures,
use the batched full-image path of `explain.occlusion`.

Reference: S. Nakandala, A. Kumar, Y. Papakonstantinou. "Incremental and
Approximate Inference for Faster Occlusion-based Deep CNN Explanations".
SIGMOD 2019 (Krypton). https://arxiv.org/abs/1905.01286
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medseg_jax.models import layers
from medseg_jax.models import unet as unet_lib

LOCAL_NORMS = ("batch", "none")


@dataclasses.dataclass(frozen=True)
class Op:
  """One operation of the network graph.

  Attributes:
    kind: `"block"` (convolution block, halo `halo`), `"pool"` (2^d max
      pooling), `"up"` (2^d up-convolution), `"concat"` (channel concat of
      two tensors of one size) or `"head"` (1^d convolution).
    inputs: names of the input tensors (`"x"` is the image).
    output: name of the output tensor.
    apply: `f(variables, *inputs) -> output` on full tensors or crops.
    halo: voxels of input around an output voxel that it depends on.
  """

  kind: str
  inputs: tuple[str, ...]
  output: str
  apply: Callable[..., jax.Array]
  halo: int = 0


def _sub(variables: Any, name: str) -> dict[str, Any]:
  out = {"params": variables["params"][name]}
  stats = variables.get("batch_stats", {})
  if name in stats:
    out["batch_stats"] = stats[name]
  return out


def unet_graph(model: nn.Module) -> list[Op] | None:
  """The operations of a `UNet` in order, or None if the model is not a
  `UNet` whose every operation is local (see the module docstring)."""
  if not isinstance(model, unet_lib.UNet) or model.norm not in LOCAL_NORMS:
    return None
  d = model.spatial_dims
  levels = len(model.features)
  ops: list[Op] = []

  def block(level, name, source, target, encoder):
    module = model.block_module(level, encoder=encoder)
    halo = module.num_convs * (module.kernel_size // 2)

    def apply(variables, x):
      return module.apply(_sub(variables, name), x, train=False)

    ops.append(Op("block", (source,), target, apply, halo))

  source = "x"
  for level in range(levels - 1):
    block(level, f"down_{level}", source, f"down_{level}", encoder=True)
    ops.append(
      Op(
        "pool",
        (f"down_{level}",),
        f"pool_{level}",
        lambda variables, x: layers.max_pool(x, d),
      )
    )
    source = f"pool_{level}"
  block(levels - 1, "bottleneck", source, "bottleneck", encoder=True)
  source = "bottleneck"
  channels = model._level_channels(levels - 1)
  for level in reversed(range(levels - 1)):
    name = f"upsample_{level}"
    module = model.upsample_module(level, channels)

    def up(variables, x, module=module, name=name):
      return module.apply(_sub(variables, name), x)

    halo = 1 if model.upsample == "resize" else 0
    ops.append(Op("up", (source,), name, up, halo))

    def concat(variables, skip, x):
      return jnp.concatenate([skip, x.astype(model.dtype)], axis=-1)

    ops.append(Op("concat", (f"down_{level}", name), f"cat_{level}", concat))
    block(level, f"up_{level}", f"cat_{level}", f"up_{level}", encoder=False)
    source = f"up_{level}"
    channels = model._level_channels(level)
  head = unet_lib.head_module(model.num_classes, d)

  def apply_head(variables, x):
    return head.apply(
      {"params": variables["params"]["head"]}, x.astype(jnp.float32)
    )

  ops.append(Op("head", (source,), "logits", apply_head))
  return ops


def graph_of(model: nn.Module) -> list[Op] | None:
  """The local graph of `model`, or None if it has none."""
  return unet_graph(model)


def run_full(
  ops: Sequence[Op], variables: Any, image: jax.Array, dtype: Any
) -> dict[str, jax.Array]:
  """Every tensor of the graph on whole images: `{name: f[B, *S_t, C_t]}`."""
  tensors = {"x": image.astype(dtype)}
  for op in ops:
    tensors[op.output] = op.apply(variables, *(tensors[n] for n in op.inputs))
  return tensors


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where every copy's patches and crops lie (host-side, per box).

  Attributes:
    sizes: per tensor, the static patch size (per spatial axis).
    starts: per tensor, `i32[N, d]` patch corners, one row per box.
    crop_sizes: per op output, the static crop size of the op's input.
    crop_starts: per op output, `i32[N, d]` crop corners (input space).
  """

  sizes: dict[str, tuple[int, ...]]
  starts: dict[str, np.ndarray]
  crop_sizes: dict[str, tuple[int, ...]]
  crop_starts: dict[str, np.ndarray]


def _needed(op: Op, intervals, size_out: int):
  """The output interval `[a, b)` a box's input patches can change, per box:
  `intervals` are `(start i64[N], stop i64[N])` of each input."""
  (a, b), h = intervals[0], op.halo
  if op.kind == "pool":
    return a // 2, -(-b // 2)
  if op.kind == "up":
    return np.maximum(2 * (a - h), 0), np.minimum(2 * (b + h), size_out)
  if op.kind == "concat":
    (a2, b2) = intervals[1]
    return np.minimum(a, a2), np.maximum(b, b2)
  return np.maximum(a - h, 0), np.minimum(b + h, size_out)


def _crop(op: Op, start: np.ndarray, size: int, size_in: int):
  """The op's input crop `(starts, static size)` for output patches
  `[start, start + size)`: inside the image, a halo beyond the patch
  wherever the crop edge is inside the image."""
  h = op.halo
  if op.kind == "pool":
    return 2 * start, 2 * size
  if op.kind == "up":
    if h == 0:  # kernel = stride: output 2i, 2i + 1 come from input i.
      return start // 2, size // 2
    length = min(size // 2 + 2 + 2 * h, size_in)
    return np.clip(start // 2 - 1 - h, 0, size_in - length), length
  if op.kind in ("concat", "head"):
    return start, size
  length = min(size + 2 * h, size_in)
  return np.clip(start - h, 0, size_in - length), length


def plan_layout(
  ops: Sequence[Op],
  shapes: dict[str, tuple[int, ...]],
  corners: np.ndarray,
  window: Sequence[int],
) -> Layout:
  """Patch and crop placement of every box (see the module docstring).

  Args:
    ops: the graph.
    shapes: spatial shape of every tensor.
    corners: `i32[N, d]` box corners.
    window: box size.

  Raises:
    AssertionError: if a patch would not fit its crop (a bug, not a user
      error: the layout rules guarantee it).
  """
  corners = np.asarray(corners, np.int64)
  d = corners.shape[1]
  sizes = {"x": tuple(int(w) for w in window)}
  starts = {"x": corners}
  crop_sizes, crop_starts = {}, {}
  for op in ops:
    size_out = shapes[op.output]
    size_in = shapes[op.inputs[0]]
    out_size, out_start, c_size, c_start = [], [], [], []
    for axis in range(d):
      intervals = [
        (starts[n][:, axis], starts[n][:, axis] + sizes[n][axis])
        for n in op.inputs
      ]
      a, b = _needed(op, intervals, size_out[axis])
      length = int(np.max(b - a))
      if op.kind == "up" and op.halo == 0:
        length += length % 2  # even: whole input voxels.
      length = min(length, size_out[axis])
      start = np.clip(a, 0, size_out[axis] - length)
      if op.kind == "up" and op.halo == 0:
        start -= start % 2
      cs, cl = _crop(op, start, length, size_in[axis])
      # Every input patch lies inside the crop.
      for n in op.inputs:
        lo = starts[n][:, axis]
        assert np.all(lo >= cs) and np.all(lo + sizes[n][axis] <= cs + cl), (
          f"occlusion layout: {n} patch outside the crop of {op.output}"
        )
      if op.kind in ("block", "up") and op.halo:
        # A crop edge inside the image lies a halo beyond the patch (the
        # output voxels nearer to it see the crop's padding).
        scale = 2 if op.kind == "up" else 1
        lo_ok = (cs == 0) | (start - scale * cs >= scale * op.halo)
        hi_ok = (cs + cl == size_in[axis]) | (
          scale * (cs + cl) - (start + length) >= scale * op.halo
        )
        assert np.all(lo_ok & hi_ok), (
          f"occlusion layout: crop of {op.output} too close to its patch"
        )
      out_size.append(length)
      out_start.append(start)
      c_size.append(int(cl))
      c_start.append(np.broadcast_to(cs, start.shape))
    sizes[op.output] = tuple(out_size)
    starts[op.output] = np.stack(out_start, axis=-1)
    crop_sizes[op.output] = tuple(c_size)
    crop_starts[op.output] = np.stack(c_start, axis=-1)
  return Layout(sizes, starts, crop_sizes, crop_starts)


def take(x: jax.Array, rows: jax.Array, starts: jax.Array, size) -> jax.Array:
  """`x[rows[k], starts[k] : starts[k] + size]` for every `k`:
  `f[K, *size, C]` from `f[B, *S, C]`."""

  def one(row, start):
    corner = (row, *start, 0)
    return jax.lax.dynamic_slice(x, corner, (1, *size, x.shape[-1]))[0]

  return jax.vmap(one)(rows, starts)


def _paste(crops: jax.Array, patches: jax.Array, offsets: jax.Array):
  """`crops[k]` with `patches[k]` written at `offsets[k]`."""

  def one(crop, patch, offset):
    return jax.lax.dynamic_update_slice(crop, patch, (*offset, 0))

  return jax.vmap(one)(crops, patches, offsets)


def _cut(x: jax.Array, offsets: jax.Array, size) -> jax.Array:
  def one(t, offset):
    return jax.lax.dynamic_slice(t, (*offset, 0), (*size, t.shape[-1]))

  return jax.vmap(one)(x, offsets)


def occluded_logits(
  ops: Sequence[Op],
  variables: Any,
  clean: dict[str, jax.Array],
  layout: Layout,
  rows: jax.Array,
  chunk: dict[str, Any],
  fill_patch: jax.Array,
) -> jax.Array:
  """The logits patch of each copy in a chunk.

  Args:
    ops, variables: the graph and the network's variables.
    clean: every tensor on the clean images (`run_full`).
    layout: sizes of the patches and crops.
    rows: `i32[K]`, the example of each copy.
    chunk: `{"starts": {tensor: i32[K, d]}, "crops": {op output: i32[K,
      d]}}` for the copies' boxes.
    fill_patch: `f[K, *window, C]`, the input patch of each copy.

  Returns:
    `f32[K, *sizes["logits"], classes]`, at `chunk["starts"]["logits"]`.
  """
  patches = {"x": fill_patch}
  factor = {"pool": 2, "up": 0.5}
  for op in ops:
    crop_start = chunk["crops"][op.output]
    crop_size = layout.crop_sizes[op.output]
    inputs = []
    for name in op.inputs:
      crop = take(clean[name], rows, crop_start, crop_size)
      offset = chunk["starts"][name] - crop_start
      inputs.append(_paste(crop, patches[name].astype(crop.dtype), offset))
    out = op.apply(variables, *inputs)
    # The output patch inside the op's output on the crop.
    scale = factor.get(op.kind, 1)
    offset = chunk["starts"][op.output] - (crop_start / scale).astype(jnp.int32)
    patches[op.output] = _cut(out, offset, layout.sizes[op.output])
  return patches["logits"].astype(jnp.float32)


def tensor_shapes(clean: dict[str, jax.Array]) -> dict[str, tuple[int, ...]]:
  return {name: tuple(t.shape[1:-1]) for name, t in clean.items()}
