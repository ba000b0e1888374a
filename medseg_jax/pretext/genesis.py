"""Models Genesis image corruptions, 2-D and 3-D, per example.

Zhou et al., "Models Genesis: Generic Autodidactic Models for 3D Medical
Image Analysis" (MICCAI 2019; MedIA 2021): a network learns to restore an
image after one or more of

* a non-linear intensity curve (a random cubic Bezier curve; half the time
  an inverting one), which teaches the intensity ranges of the tissues;
* local pixel shuffling (pixels permuted inside small blocks), which
  teaches texture and boundaries;
* in-painting (boxes replaced by noise, restored from their surround) or
  out-painting (everything outside a few boxes replaced by noise,
  restored from the boxes' content).

Every function here is pure and jittable, takes its own key and one
example ``image: f32[*S, C]`` (``S`` of rank 2 or 3), and returns an image
of the same shape and dtype; all shapes are static (box sizes vary through
masks, not slices). Images may be on any scale (the trainer feeds z-scored
ones): the curve works on the example's own ``[min, max]`` range, and the
noise of the painting ops is uniform over that range.

Differences from the reference implementation: the shuffled blocks have
one fixed size (``block``) on a regular grid, of which a random share is
shuffled, rather than up to 10,000 blocks of random sizes at random
positions; sizes vary only through ``block`` and ``share``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _value_range(image: jax.Array) -> tuple[jax.Array, jax.Array]:
  return jnp.min(image), jnp.max(image)


def intensity_curve(
  key: jax.Array, image: jax.Array, *, num_points: int = 256
) -> jax.Array:
  """Maps intensities through a random monotone cubic Bezier curve.

  The curve runs from ``(0, 0)`` to ``(1, 1)`` through two control points
  drawn uniformly in the unit square, on the example's intensities scaled
  to ``[0, 1]``; with probability 1/2 it is reflected (``y -> 1 - y``), an
  intensity inversion, as in Models Genesis.

  Args:
    key: PRNG key.
    image: ``f32[*S, C]``.
    num_points: samples of the curve, interpolated linearly between.

  Returns:
    ``f32[*S, C]``: the mapped image, back on the input's ``[min, max]``.
  """
  control_key, flip_key = jax.random.split(key)
  (x1, y1), (x2, y2) = jax.random.uniform(control_key, (2, 2))
  t = jnp.linspace(0.0, 1.0, num_points)
  b1 = 3 * t * (1 - t) ** 2
  b2 = 3 * t**2 * (1 - t)
  b3 = t**3
  xs = b1 * x1 + b2 * x2 + b3
  ys = b1 * y1 + b2 * y2 + b3
  order = jnp.argsort(xs)
  xs, ys = xs[order], ys[order]
  ys = jnp.where(jax.random.bernoulli(flip_key), 1.0 - ys, ys)
  low, high = _value_range(image)
  scale = jnp.maximum(high - low, 1e-6)
  unit = (image - low) / scale
  mapped = jnp.interp(unit.reshape(-1), xs, ys).reshape(image.shape)
  return (mapped * scale + low).astype(image.dtype)


def local_shuffle(
  key: jax.Array,
  image: jax.Array,
  *,
  block: int = 8,
  share: float = 0.5,
) -> jax.Array:
  """Permutes the voxels inside a random share of small blocks.

  The image is cut into ``block``-sized cubes (squares in 2-D) on a
  regular grid; each cube, with probability ``share``, has its voxels
  permuted at random (all channels alike). Voxels past the last whole
  block of an axis are left as they are.

  Args:
    key: PRNG key.
    image: ``f32[*S, C]``.
    block: edge of a block, in voxels.
    share: probability that a block is shuffled.

  Returns:
    ``f32[*S, C]``, the same multiset of voxel values per block.
  """
  image = jnp.asarray(image)
  shape, channels = image.shape[:-1], image.shape[-1]
  nd = len(shape)
  counts = [s // block for s in shape]
  if min(counts) < 1:
    return image
  inner = tuple(slice(0, n * block) for n in counts)
  core = image[inner]
  # [n1, b, n2, b, (n3, b,) C] -> [n1, n2, (n3,) b, b, (b,) C] -> blocks.
  split = core.reshape(sum(([n, block] for n in counts), []) + [channels])
  grid_axes = tuple(range(0, 2 * nd, 2))
  block_axes = tuple(range(1, 2 * nd, 2))
  blocks = split.transpose(grid_axes + block_axes + (2 * nd,))
  num_blocks, size = math.prod(counts), block**nd
  flat = blocks.reshape(num_blocks, size, channels)
  order_key, pick_key = jax.random.split(key)
  order = jnp.argsort(jax.random.uniform(order_key, (num_blocks, size)), axis=1)
  shuffled = jnp.take_along_axis(flat, order[..., None], axis=1)
  chosen = jax.random.bernoulli(pick_key, float(share), (num_blocks, 1, 1))
  flat = jnp.where(chosen, shuffled, flat)
  blocks = flat.reshape(blocks.shape)
  inverse = [0] * (2 * nd)
  for i in range(nd):
    inverse[2 * i] = i
    inverse[2 * i + 1] = nd + i
  core = blocks.transpose(tuple(inverse) + (2 * nd,)).reshape(core.shape)
  return image.at[inner].set(core)


def _boxes(
  key: jax.Array,
  shape: Sequence[int],
  num_boxes: int,
  size: tuple[float, float],
  first_always: bool = True,
) -> jax.Array:
  """The union of up to ``num_boxes`` random boxes, ``bool[*S]``.

  Each box's edge along each axis is a uniform share in ``size`` of that
  axis, its position uniform; box 0 is always there (if
  ``first_always``), each further one with probability 1/2.
  """
  nd = len(shape)
  size_key, pos_key, on_key = jax.random.split(key, 3)
  extent = jnp.asarray(shape, jnp.float32)
  edges = jnp.round(
    jax.random.uniform(
      size_key, (num_boxes, nd), minval=size[0], maxval=size[1]
    )
    * extent
  )
  edges = jnp.clip(edges, 1, extent)
  starts = jnp.floor(
    jax.random.uniform(pos_key, (num_boxes, nd)) * (extent - edges + 1)
  )
  on = jax.random.bernoulli(on_key, 0.5, (num_boxes,))
  if first_always:
    on = on.at[0].set(True)
  # Per axis, which coordinates each box covers: [num_boxes, S_axis]; the
  # box is their outer product.
  inside = on.reshape((num_boxes,) + (1,) * nd)
  for axis, size_along in enumerate(shape):
    coords = jnp.arange(size_along, dtype=jnp.float32)
    start, edge = starts[:, axis, None], edges[:, axis, None]
    covered = (coords >= start) & (coords < start + edge)
    view = [num_boxes] + [1] * nd
    view[axis + 1] = size_along
    inside = inside & covered.reshape(view)
  return jnp.any(inside, axis=0)


def _noise_like(key: jax.Array, image: jax.Array) -> jax.Array:
  low, high = _value_range(image)
  return jax.random.uniform(
    key, image.shape, image.dtype, minval=low, maxval=high
  )


def in_painting(
  key: jax.Array,
  image: jax.Array,
  *,
  num_boxes: int = 5,
  size: tuple[float, float] = (1 / 8, 1 / 4),
) -> jax.Array:
  """Replaces up to ``num_boxes`` boxes by uniform noise.

  Args:
    key: PRNG key.
    image: ``f32[*S, C]``.
    num_boxes: the most boxes (the first always, each other with
      probability 1/2).
    size: range of a box's edge as a share of each axis.

  Returns:
    ``f32[*S, C]``: noise over the image's value range inside the boxes.
  """
  box_key, noise_key = jax.random.split(key)
  holes = _boxes(box_key, image.shape[:-1], num_boxes, size)
  return jnp.where(holes[..., None], _noise_like(noise_key, image), image)


def out_painting(
  key: jax.Array,
  image: jax.Array,
  *,
  num_boxes: int = 5,
  size: tuple[float, float] = (3 / 7, 4 / 7),
) -> jax.Array:
  """Keeps only up to ``num_boxes`` boxes; noise everywhere else.

  Args:
    key: PRNG key.
    image: ``f32[*S, C]``.
    num_boxes: the most boxes kept (the first always, each other with
      probability 1/2).
    size: range of a box's edge as a share of each axis (Models Genesis
      keeps boxes of 3/7 to 4/7 of the image).

  Returns:
    ``f32[*S, C]``: the image inside the boxes, noise outside.
  """
  box_key, noise_key = jax.random.split(key)
  keep = _boxes(box_key, image.shape[:-1], num_boxes, size)
  return jnp.where(keep[..., None], image, _noise_like(noise_key, image))


def models_genesis(
  key: jax.Array,
  image: jax.Array,
  *,
  shuffle_p: float = 0.5,
  curve_p: float = 0.9,
  paint_p: float = 0.9,
  in_painting_share: float = 0.2,
  block: int = 8,
  shuffle_share: float = 0.5,
) -> jax.Array:
  """The Models Genesis composition, in the paper's order.

  Local shuffling with probability ``shuffle_p``, then the intensity curve
  with probability ``curve_p``, then with probability ``paint_p`` either
  in-painting (a share ``in_painting_share`` of those times) or
  out-painting; the defaults are the reference implementation's.

  Args:
    key: PRNG key.
    image: ``f32[*S, C]``, the clean input (the restoration target).
    shuffle_p: probability of local pixel shuffling.
    curve_p: probability of the non-linear intensity curve.
    paint_p: probability of in- or out-painting.
    in_painting_share: share of the painted examples that are in-painted.
    block: block edge of the local shuffling.
    shuffle_share: share of blocks shuffled.

  Returns:
    ``f32[*S, C]``, the corrupted image.
  """
  keys = jax.random.split(key, 8)
  out = image
  shuffled = local_shuffle(keys[0], out, block=block, share=shuffle_share)
  out = jnp.where(jax.random.bernoulli(keys[1], shuffle_p), shuffled, out)
  curved = intensity_curve(keys[2], out)
  out = jnp.where(jax.random.bernoulli(keys[3], curve_p), curved, out)
  inside = in_painting(keys[4], out)
  outside = out_painting(keys[5], out)
  painted = jnp.where(
    jax.random.bernoulli(keys[6], in_painting_share), inside, outside
  )
  return jnp.where(jax.random.bernoulli(keys[7], paint_p), painted, out)
