"""Geometric augmentations: flips, rot90, random affine, elastic deformation.

Every op has the signature ``op(key, example, **params) -> example`` for ONE
channels-last example (``image: f[*S, C]``, ``label: int[*S]``,
``mask: f[*S]``, ``S`` of rank 2 or 3) and applies the op unconditionally;
the probability ``p`` is handled by :mod:`medseg_jax.augment.registry`.
One random draw defines the transform, which moves image, label and mask
together. Flips and rot90 permute voxels exactly; affine and elastic build
one grid of source coordinates and call
:func:`medseg_jax.augment.sampling.resample` (linear image, nearest label
and mask, zeros out of bounds). Ranges are ``(low, high)`` pairs sampled
uniformly per example; parameters are static Python values.

Each op also has a point form, ``*_points(key, points, shape, **params)``,
that maps output positions ``f32[d, *S]`` to the positions they sample in
the op's input, with the same random draws as the op. The pipeline
(:mod:`medseg_jax.augment.registry`) composes a run of geometric ops
through these and resamples once. ``elastic_points`` takes the identity
grid only (its displacement field lives on the grid), so it can only be
the last op of such a run.
"""

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from medseg_jax.augment import sampling

Example = dict[str, jax.Array]
Range = tuple[float, float]
SPATIAL_KEYS = ("image", "label", "mask")


def _spatial_shape(example: Example) -> tuple[int, ...]:
  shape = example["image"].shape[:-1]
  if len(shape) not in (2, 3):
    raise ValueError(
      f"augment: image must be [*S, C] with S of rank 2 or 3, got shape "
      f"{example['image'].shape}."
    )
  return shape


def per_axis_ranges(
  value: Sequence[Range], count: int, op: str, name: str
) -> tuple[Range, ...]:
  """Expands one range, or checks ``count`` ranges, for per-axis draws.

  Args:
    value: one ``(low, high)`` pair, or a tuple of pairs of length 1 or
      ``count``.
    count: the number of independent draws (axes or rotation planes).
    op: op name, for the error message.
    name: parameter name, for the error message.

  Returns:
    ``count`` pairs.

  Raises:
    ValueError: on any other length.
  """
  value = tuple(value)
  if len(value) == 2 and all(isinstance(v, int | float) for v in value):
    value = (value,)
  if len(value) == 1:
    return value * count
  if len(value) != count:
    raise ValueError(
      f"augment op {op!r}: {name} has {len(value)} ranges but this example "
      f"needs 1 or {count}."
    )
  return value


def _check_axes(axes: Sequence[int], d: int, op: str, name: str) -> None:
  for a in axes:
    if not 0 <= a < d:
      raise ValueError(
        f"augment op {op!r}: {name} has axis {a}, but the example has {d} "
        f"spatial axes (valid: 0..{d - 1})."
      )


def _uniform(key: jax.Array, ranges: Sequence[Range]) -> jax.Array:
  """One uniform draw per ``(low, high)`` pair: ``f32[len(ranges)]``."""
  low = jnp.asarray([r[0] for r in ranges], jnp.float32)
  high = jnp.asarray([r[1] for r in ranges], jnp.float32)
  return jax.random.uniform(
    key, (len(ranges),), jnp.float32, minval=low, maxval=high
  )


def flip(
  key: jax.Array,
  example: Example,
  axes: Sequence[int] | None = None,
  axis_p: float = 0.5,
) -> Example:
  """Flips each spatial axis independently with probability ``axis_p``.

  Args:
    key: PRNG key.
    example: one example (``image: f[*S, C]``, ``label``, ``mask: [*S]``).
    axes: spatial axes that may flip (``None``: all).
    axis_p: probability of flipping each of those axes.

  Returns:
    The flipped example (exact voxel permutation).
  """
  axes, draws = _flip_draws(key, _spatial_shape(example), axes, axis_p)
  out = dict(example)
  for i, a in enumerate(axes):
    for name in SPATIAL_KEYS:
      out[name] = jnp.where(draws[i], jnp.flip(out[name], a), out[name])
  return out


def _flip_draws(
  key: jax.Array,
  shape: Sequence[int],
  axes: Sequence[int] | None,
  axis_p: float,
) -> tuple[tuple[int, ...], jax.Array]:
  d = len(shape)
  axes = tuple(range(d)) if axes is None else tuple(axes)
  _check_axes(axes, d, "flip", "axes")
  return axes, jax.random.bernoulli(key, axis_p, (len(axes),))


def flip_points(
  key: jax.Array,
  points: jax.Array,
  shape: Sequence[int],
  axes: Sequence[int] | None = None,
  axis_p: float = 0.5,
) -> jax.Array:
  """:func:`flip` as a map of positions ``f32[d, *S]`` (same draws)."""
  axes, draws = _flip_draws(key, shape, axes, axis_p)
  rows = list(points)
  for i, a in enumerate(axes):
    rows[a] = jnp.where(draws[i], (shape[a] - 1) - rows[a], rows[a])
  return jnp.stack(rows)


def rot90(
  key: jax.Array,
  example: Example,
  planes: Sequence[tuple[int, int]] | None = None,
) -> Example:
  """Rotates by 90, 180 or 270 degrees in one randomly chosen plane.

  Args:
    key: PRNG key.
    example: one example.
    planes: candidate planes as pairs of spatial axes. ``None``: every pair
      of spatial axes of equal size (no eligible pair: identity). A listed
      plane whose two axes differ in size is an error, because the rotated
      example would change shape.

  Returns:
    The rotated example (exact voxel permutation, same shape).

  Raises:
    ValueError: at trace time, for a listed plane with unequal sizes or an
      invalid axis.
  """
  shape = _spatial_shape(example)
  turns = _rot90_turns(shape, planes)
  if not turns:
    return example
  subset = {name: example[name] for name in SPATIAL_KEYS}

  def branch(plane, k):
    return lambda ex: {
      name: jnp.rot90(x, k, axes=plane) for name, x in ex.items()
    }

  branches = [branch(plane, k) for plane, k in turns]
  choice = jax.random.randint(key, (), 0, len(branches))
  return {**example, **lax.switch(choice, branches, subset)}


def _rot90_turns(
  shape: Sequence[int], planes: Sequence[tuple[int, int]] | None
) -> list[tuple[tuple[int, int], int]]:
  """The ``(plane, k)`` candidates of :func:`rot90`, in draw order."""
  d = len(shape)
  if planes is None:
    planes = [
      (i, j)
      for i, j in itertools.combinations(range(d), 2)
      if shape[i] == shape[j]
    ]
  planes = [tuple(p) for p in planes]
  for plane in planes:
    _check_axes(plane, d, "rot90", "planes")
    if shape[plane[0]] != shape[plane[1]]:
      raise ValueError(
        f"augment op 'rot90': plane {plane} has sizes "
        f"{shape[plane[0]]} != {shape[plane[1]]} in spatial shape {shape}; "
        "rot90 needs a square plane (list only square planes, or use "
        "op='affine' for arbitrary rotations)."
      )
  return [(plane, k) for plane in planes for k in (1, 2, 3)]


def rot90_points(
  key: jax.Array,
  points: jax.Array,
  shape: Sequence[int],
  planes: Sequence[tuple[int, int]] | None = None,
) -> jax.Array:
  """:func:`rot90` as a map of positions ``f32[d, *S]`` (same draws).

  ``jnp.rot90(x, k, axes=(i, j))`` takes output position ``y`` from input
  ``(y_j, n - 1 - y_i)`` (k = 1), ``(n - 1 - y_i, n - 1 - y_j)`` (k = 2) or
  ``(n - 1 - y_j, y_i)`` (k = 3) in axes ``(i, j)``, ``n`` the plane size.
  """
  turns = _rot90_turns(shape, planes)
  if not turns:
    return points

  def branch(plane, k):
    i, j = plane
    last = shape[i] - 1

    def turn(p):
      yi, yj = p[i], p[j]
      if k == 1:
        si, sj = yj, last - yi
      elif k == 2:
        si, sj = last - yi, last - yj
      else:
        si, sj = last - yj, yi
      return p.at[i].set(si).at[j].set(sj)

    return turn

  choice = jax.random.randint(key, (), 0, len(turns))
  return lax.switch(choice, [branch(p, k) for p, k in turns], points)


def _rotation_matrix(angles: jax.Array, d: int) -> jax.Array:
  """Rotation from radians: one angle (2-D) or one per axis (3-D)."""
  if d == 2:
    c, s = jnp.cos(angles[0]), jnp.sin(angles[0])
    return jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])
  rotation = jnp.eye(3, dtype=jnp.float32)
  # Rotation about axis a turns the plane of the two other axes.
  for a, (i, j) in enumerate(((1, 2), (0, 2), (0, 1))):
    c, s = jnp.cos(angles[a]), jnp.sin(angles[a])
    r = jnp.eye(3, dtype=jnp.float32)
    r = r.at[i, i].set(c).at[j, j].set(c).at[i, j].set(-s).at[j, i].set(s)
    rotation = rotation @ r
  return rotation


def affine(
  key: jax.Array,
  example: Example,
  rotation: Sequence[Range] = ((-15.0, 15.0),),
  scale: Range = (0.85, 1.15),
  per_axis_scale: bool = False,
  shear: Range = (0.0, 0.0),
  translation: Sequence[Range] = ((0.0, 0.0),),
) -> Example:
  """Random rotation, scaling, shear and translation about the centre.

  The forward transform is ``y = M (x - c) + c + t`` with
  ``M = R @ Sh @ diag(s)``, ``c`` the array centre; every output voxel
  samples the input at ``M^-1 (y - c - t) + c``. ``scale > 1`` enlarges the
  content (zoom in).

  Args:
    key: PRNG key.
    example: one example.
    rotation: degrees; one ``(low, high)`` for every rotation angle, or one
      per angle (2-D: 1 angle; 3-D: 3 angles, about axes 0, 1, 2).
    scale: zoom factor range, > 0.
    per_axis_scale: draw one zoom per spatial axis instead of one isotropic
      zoom.
    shear: range of each upper off-diagonal entry of the unit upper
      triangular shear matrix ``Sh``.
    translation: shift as a fraction of the axis size; one range for every
      axis or one per spatial axis.

  Returns:
    The transformed example; voxels mapped from outside the input get image
    0, label 0 and mask 0.
  """
  shape = _spatial_shape(example)
  coords = affine_points(
    key,
    sampling.identity_grid(shape),
    shape,
    rotation=rotation,
    scale=scale,
    per_axis_scale=per_axis_scale,
    shear=shear,
    translation=translation,
  )
  return sampling.resample(example, coords)


def _unit_upper_inverse(matrix: jax.Array) -> jax.Array:
  """Inverse of ``I + N``, ``N`` strictly upper triangular: ``sum (-N)^k``."""
  d = matrix.shape[0]
  nilpotent = matrix - jnp.eye(d, dtype=matrix.dtype)
  inverse = term = jnp.eye(d, dtype=matrix.dtype)
  for _ in range(d - 1):
    term = -term @ nilpotent
    inverse = inverse + term
  return inverse


def affine_points(
  key: jax.Array,
  points: jax.Array,
  shape: Sequence[int],
  rotation: Sequence[Range] = ((-15.0, 15.0),),
  scale: Range = (0.85, 1.15),
  per_axis_scale: bool = False,
  shear: Range = (0.0, 0.0),
  translation: Sequence[Range] = ((0.0, 0.0),),
) -> jax.Array:
  """:func:`affine` as a map of positions ``f32[d, *S]`` (same draws).

  Returns ``M^-1 (y - c - t) + c`` for every position ``y``, with ``M^-1 =
  diag(1 / s) @ Sh^-1 @ R^T`` in closed form (no batched linear solve).
  """
  shape = tuple(shape)
  d = len(shape)
  n_angles = 1 if d == 2 else 3
  rotation = per_axis_ranges(rotation, n_angles, "affine", "rotation")
  translation = per_axis_ranges(translation, d, "affine", "translation")
  k_rot, k_scale, k_shear, k_shift = jax.random.split(key, 4)
  angles = _uniform(k_rot, rotation) * (math.pi / 180.0)
  zoom = _uniform(k_scale, [scale] * (d if per_axis_scale else 1))
  zoom = jnp.broadcast_to(zoom, (d,))
  n_shear = d * (d - 1) // 2
  shear_values = _uniform(k_shear, [shear] * n_shear)
  rows, cols = jnp.triu_indices(d, 1)
  shear_matrix = jnp.eye(d, dtype=jnp.float32).at[rows, cols].set(shear_values)
  # forward = R @ Sh @ diag(zoom); R is orthogonal.
  inverse = (
    (1.0 / zoom)[:, None]
    * _unit_upper_inverse(shear_matrix)
    @ _rotation_matrix(angles, d).T
  )
  size = jnp.asarray(shape, jnp.float32)
  shift = _uniform(k_shift, translation) * size
  centre = (size - 1) / 2
  expand = (slice(None),) + (None,) * (points.ndim - 1)
  relative = points - (centre + shift)[expand]
  return jnp.tensordot(inverse, relative, axes=1) + centre[expand]


def elastic(
  key: jax.Array,
  example: Example,
  magnitude: Range = (0.0, 8.0),
  grid: int | Sequence[int] = 6,
) -> Example:
  """Elastic deformation from random displacements on a coarse grid.

  As in the U-Net paper: displacement vectors at the nodes of a coarse
  control grid are drawn from ``N(0, sigma^2)`` in voxels, interpolated to
  every voxel with cubic (Catmull-Rom) interpolation, and the example is
  resampled at ``x + displacement(x)``. ``sigma`` is drawn uniformly from
  ``magnitude`` per example.

  Args:
    key: PRNG key.
    example: one example.
    magnitude: range of the displacement standard deviation, in voxels.
    grid: control nodes per axis (>= 2), an int for every axis or one per
      spatial axis; the first and last nodes sit on the border voxels.

  Returns:
    The deformed example; voxels displaced from outside the input get image
    0, label 0 and mask 0.
  """
  shape = _spatial_shape(example)
  coords = elastic_points(
    key,
    sampling.identity_grid(shape),
    shape,
    magnitude=magnitude,
    grid=grid,
  )
  return sampling.resample(example, coords)


def elastic_points(
  key: jax.Array,
  points: jax.Array,
  shape: Sequence[int],
  magnitude: Range = (0.0, 8.0),
  grid: int | Sequence[int] = 6,
) -> jax.Array:
  """:func:`elastic` as a map of the identity grid (same draws).

  Args:
    key: PRNG key.
    points: ``sampling.identity_grid(shape)``; the displacement field is
      defined on the grid, so other positions are not supported.
    shape: spatial shape ``S``.
    magnitude: as in :func:`elastic`.
    grid: as in :func:`elastic`.

  Returns:
    ``points + displacement``, ``f32[d, *S]``.
  """
  shape = tuple(shape)
  d = len(shape)
  nodes = (grid,) * d if isinstance(grid, int) else tuple(grid)
  if len(nodes) != d:
    raise ValueError(
      f"augment op 'elastic': grid={grid} has {len(nodes)} entries but the "
      f"example has {d} spatial axes."
    )
  k_sigma, k_disp = jax.random.split(key)
  sigma = _uniform(k_sigma, [magnitude])[0]
  displacement = sigma * jax.random.normal(k_disp, (d, *nodes), jnp.float32)
  for a in range(d):
    matrix = sampling.cubic_upsample_matrix(shape[a], nodes[a])
    displacement = sampling.apply_along_axis(matrix, displacement, a + 1)
  return points + displacement
