"""Resampling on static grids: linear for images, nearest for labels/masks.

An example is a dict with ``image: f[*S, C]``, ``label: int[*S]`` and
``mask: f32[*S]`` (1 = real voxel, 0 = padding), ``S = (H, W)`` or
``(D, H, W)``. A geometric transform is described by one array of source
coordinates, ``coords: f32[d, *S]``: output voxel ``x`` takes its value from
the (fractional) input position ``coords[:, x]``, in voxel index units.

:func:`resample` applies such a grid to the whole example:

* label and mask: nearest neighbour (``floor(c + 0.5)``), so no new label
  values appear;
* image: linear interpolation, with neighbours clamped to the array (edge
  replication) so that voxels near the border are not darkened;
* a voxel whose nearest source lies outside the array gets image 0, label 0
  and mask 0, the same region for all three.

The separable helpers (cubic upsampling matrices, per-axis sampling and
zero-padded convolution) are used by the elastic, blur and low-resolution
ops. Everything has static shapes and works under ``jit`` and ``vmap``.
"""

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Example = dict[str, jax.Array]


def identity_grid(shape: Sequence[int]) -> jax.Array:
  """Voxel index coordinates of an array of spatial shape ``shape``.

  Args:
    shape: the spatial shape ``S`` (length ``d``).

  Returns:
    ``f32[d, *S]`` with ``grid[a, x] == x[a]``.
  """
  axes = [jnp.arange(n, dtype=jnp.float32) for n in shape]
  return jnp.stack(jnp.meshgrid(*axes, indexing="ij"))


def resample(example: Example, coords: jax.Array) -> Example:
  """Samples image, label and mask at the source coordinates ``coords``.

  Args:
    example: ``image: f[*S, C]``, ``label: int[*S]``, ``mask: f[*S]``; other
      keys are passed through unchanged.
    coords: ``f32[d, *S]`` source position (voxel units) of every output
      voxel.

  Returns:
    The example with image (linear), label and mask (nearest) resampled;
    image, label and mask are zero where the nearest source voxel is out of
    bounds. Shapes and dtypes are unchanged.
  """
  image = example["image"]
  shape = image.shape[:-1]
  d = len(shape)
  if coords.shape != (d, *shape):
    raise ValueError(
      f"resample: coords must be f32[{d}, *{shape}], got {coords.shape}."
    )
  nearest = jnp.floor(coords + 0.5).astype(jnp.int32)
  valid = jnp.ones(shape, bool)
  index = []
  for a, n in enumerate(shape):
    valid &= (nearest[a] >= 0) & (nearest[a] <= n - 1)
    index.append(jnp.clip(nearest[a], 0, n - 1))
  index = tuple(index)
  out = dict(example)
  for name in ("label", "mask"):
    x = example[name]
    out[name] = jnp.where(valid, x[index], jnp.zeros((), x.dtype))

  low = jnp.floor(coords)
  frac = (coords - low).astype(image.dtype)
  low = low.astype(jnp.int32)
  interpolated = jnp.zeros_like(image)
  for corner in itertools.product((0, 1), repeat=d):
    weight = jnp.ones(shape, image.dtype)
    index = []
    for a, n in enumerate(shape):
      index.append(jnp.clip(low[a] + corner[a], 0, n - 1))
      weight = weight * (frac[a] if corner[a] else 1 - frac[a])
    interpolated = interpolated + weight[..., None] * image[tuple(index)]
  out["image"] = jnp.where(
    valid[..., None], interpolated, jnp.zeros((), image.dtype)
  )
  return out


def _keys_cubic(t: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel (a = -0.5, Catmull-Rom) at offsets t."""
  a = -0.5
  t = np.abs(t)
  near = (a + 2) * t**3 - (a + 3) * t**2 + 1
  far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
  return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def cubic_upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
  """Cubic (Catmull-Rom) interpolation from ``n_in`` nodes to ``n_out``.

  Node ``j`` sits at output position ``j * (n_out - 1) / (n_in - 1)`` (first
  and last nodes on the first and last voxel); the missing neighbours of the
  end nodes are extrapolated linearly. The curve passes through the node
  values and reproduces linear functions exactly.

  Args:
    n_out: number of output samples.
    n_in: number of control nodes (>= 1).

  Returns:
    ``f32[n_out, n_in]`` matrix ``m`` with ``values_out = m @ values_in``.
  """
  m = np.zeros((n_out, n_in), np.float64)
  if n_in == 1 or n_out == 1:
    m[:, 0] = 1.0
    return m.astype(np.float32)
  u = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  base = np.minimum(np.floor(u).astype(int), n_in - 1)
  t = u - base
  rows = np.arange(n_out)
  for offset in (-1, 0, 1, 2):
    cols = base + offset
    weight = _keys_cubic(t - offset)
    # Ghost nodes beyond the ends are extrapolated linearly (v[-1] = 2 v[0]
    # - v[1]), so linear ramps are reproduced up to the border.
    for ghost, edge, inner in ((-1, 0, 1), (n_in, n_in - 1, n_in - 2)):
      is_ghost = cols == ghost
      np.add.at(m, (rows[is_ghost], edge), 2 * weight[is_ghost])
      np.add.at(m, (rows[is_ghost], inner), -weight[is_ghost])
      weight = np.where(is_ghost, 0.0, weight)
    np.add.at(m, (rows, np.clip(cols, 0, n_in - 1)), weight)
  return m.astype(np.float32)


def apply_along_axis(
  matrix: jax.typing.ArrayLike, x: jax.Array, axis: int
) -> jax.Array:
  """Applies ``matrix: [n_out, n_in]`` to axis ``axis`` of ``x``."""
  y = jnp.tensordot(jnp.asarray(matrix, x.dtype), x, axes=[[1], [axis]])
  return jnp.moveaxis(y, 0, axis)


def sample_axis(
  x: jax.Array, positions: jax.Array, axis: int, order: int
) -> jax.Array:
  """Samples ``x`` along one axis at fractional positions (edge clamped).

  Args:
    x: any array.
    positions: ``f32[m]`` positions along ``axis``, in index units.
    axis: the axis to sample.
    order: 0 (nearest) or 1 (linear).

  Returns:
    ``x`` with axis ``axis`` replaced by the ``m`` samples.
  """
  n = x.shape[axis]
  if order == 0:
    index = jnp.clip(jnp.floor(positions + 0.5).astype(jnp.int32), 0, n - 1)
    return jnp.take(x, index, axis=axis)
  low = jnp.floor(positions)
  t = (positions - low).astype(x.dtype)
  low = low.astype(jnp.int32)
  a = jnp.take(x, jnp.clip(low, 0, n - 1), axis=axis)
  b = jnp.take(x, jnp.clip(low + 1, 0, n - 1), axis=axis)
  shape = [1] * x.ndim
  shape[axis] = positions.shape[0]
  t = t.reshape(shape)
  return (1 - t) * a + t * b


def convolve_axis(x: jax.Array, weights: jax.Array, axis: int) -> jax.Array:
  """Centred 1-D convolution along ``axis`` with zero padding.

  Args:
    x: any float array.
    weights: ``f[2r + 1]`` kernel (static length).
    axis: the axis to convolve.

  Returns:
    An array of the shape of ``x``.
  """
  r = (weights.shape[0] - 1) // 2
  n = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  padded = jnp.pad(x, pad)
  out = jnp.zeros_like(x)
  for k in range(2 * r + 1):
    out = out + weights[k] * lax.slice_in_dim(padded, k, k + n, axis=axis)
  return out
