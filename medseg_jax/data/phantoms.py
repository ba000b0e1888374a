"""Synthetic anatomy-like phantoms for segmentation, in pure NumPy.

A phantom is a body outline (background class) that contains

* an *organ*: a smoothly deformed ellipse (2-D) or ellipsoid (3-D) with a
  random position, size and orientation;
* a *lesion*: a smaller deformed blob strictly inside the organ, present in
  most but not all cases;
* a *vessel*: a curved tube that passes beside the organ without touching it.

Labels come straight from the geometry. The intensity image is rendered from
the labels with per-case random contrasts (so no single global threshold
separates the classes), a smooth multiplicative bias field, a Gaussian
partial-volume blur and additive Gaussian noise.

Geometry is defined in physical units (the voxel spacing is honoured), so a
3-D volume with anisotropic spacing holds the same kind of anatomy as a 2-D
image. The same generator serves both: pass a 2-tuple or a 3-tuple `shape`.

Everything is driven by one `np.random.Generator`, so a phantom is a pure
function of its seed: the same seed gives bit-identical arrays.

Example:

  rng = np.random.default_rng(0)
  image, label = make_phantom(rng, (128, 128))
  image.shape, image.dtype  # (128, 128, 1), float32
  label.shape, label.dtype  # (128, 128), uint8
"""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

CLASS_NAMES = ("background", "organ", "lesion", "vessel")
BACKGROUND, ORGAN, LESION, VESSEL = range(4)
NUM_CLASSES = len(CLASS_NAMES)

# Geometry, in "units" of half the shortest physical side of the field of
# view: a 128 x 128 image at 1 mm has 64 pixels per unit.
_ORGAN_SEMI_AXES = (0.32, 0.5)
_ORGAN_CENTRE_JITTER = 0.15  # As a fraction of each axis' half extent.
_LESION_RADIUS = (0.13, 0.2)  # 8.3 to 12.8 px at 128^2, 4 to 6 px at 64^3.
_LESION_PROBABILITY = 0.85
_VESSEL_RADIUS = (0.065, 0.095)  # 4.2 to 6.1 px at 128^2.
_VESSEL_MAX_CURVATURE = 0.4
_BODY_SEMI_AXES = (0.88, 0.98)
_SHAPE_HARMONIC_AMPLITUDE = 0.07  # Per harmonic; three harmonics per shape.
_VESSEL_TRIES = 32
# Gaps in voxels (of the finest spacing) that keep the structures apart.
_LESION_MARGIN_VOXELS = 2.0
_VESSEL_GAP_VOXELS = 2.0

# Mean intensities, drawn per case. Organ and vessel ranges overlap across
# cases, and lesions are randomly darker or brighter than their organ.
_AIR = (0.0, 0.05)
_BODY = (0.12, 0.28)
_ORGAN = (0.4, 0.65)
_VESSEL = (0.6, 0.95)
_LESION_CONTRAST = (0.15, 0.3)
_MIN_CONTRAST = 0.15
_BLUR_SIGMA_VOXELS = (0.5, 1.0)
_NOISE_SIGMA = (0.015, 0.05)
_BIAS_LINEAR = 0.1
_BIAS_QUADRATIC = 0.05
_BIAS_MAX_LOG = 0.3


class _Grid:
  """Voxel coordinates in units of half the shortest physical side.

  Attributes:
    shape: spatial shape `S`.
    ndim: number of spatial axes.
    spacing: voxel size along each axis, in units.
    voxel: the finest voxel size, in units.
    half_extent: half the field of view along each axis, in units (1 along
      the shortest side).
    coords: `f64[*S, ndim]` voxel centres, in units, origin at the centre.
  """

  def __init__(self, shape: Sequence[int], spacing: Sequence[float] | None):
    self.shape = tuple(int(n) for n in shape)
    if len(self.shape) not in (2, 3):
      raise ValueError(f"shape must have 2 or 3 axes, got {self.shape}.")
    if spacing is None:
      spacing = (1.0,) * len(self.shape)
    if len(spacing) != len(self.shape):
      raise ValueError(
        f"spacing {tuple(spacing)} does not match shape {self.shape}."
      )
    self.ndim = len(self.shape)
    extent = np.asarray(self.shape) * np.asarray(spacing, np.float64)
    mm_per_unit = extent.min() / 2
    self.spacing = np.asarray(spacing, np.float64) / mm_per_unit
    self.half_extent = extent / 2 / mm_per_unit
    self.voxel = self.spacing.min()
    axes = [
      (np.arange(n) - (n - 1) / 2) * s
      for n, s in zip(self.shape, self.spacing, strict=True)
    ]
    self.coords = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)

  def to_index(self, points: np.ndarray) -> np.ndarray:
    """Maps `f[N, ndim]` unit coordinates to the nearest voxel indices."""
    index = points / self.spacing + (np.asarray(self.shape) - 1) / 2
    return np.rint(index).astype(np.int64)


def make_phantom(
  rng: np.random.Generator,
  shape: Sequence[int],
  spacing: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Draws one phantom: an intensity image and its label map.

  Args:
    rng: source of all randomness; the result is a deterministic function of
      its state.
    shape: spatial shape, `(H, W)` or `(D, H, W)`.
    spacing: voxel spacing in mm, one entry per axis of `shape`. Defaults to
      isotropic 1 mm. Anatomy is drawn in physical units, so anisotropic
      spacing gives the same anatomy at a coarser sampling along that axis.

  Returns:
    `(image, label)` with `image: f32[*shape, 1]` (not normalised; values
    of order 1) and `label: u8[*shape]` holding indices into `CLASS_NAMES`:
    0 background, 1 organ, 2 lesion, 3 vessel. The lesion, when present, has
    organ on every side; the vessel never touches the organ.

  Raises:
    ValueError: if `shape` does not have 2 or 3 axes, or `spacing` does not
      match it.
  """
  grid = _Grid(shape, spacing)
  label, body = _draw_geometry(rng, grid)
  return _render(rng, grid, label, body), label


def _draw_geometry(
  rng: np.random.Generator, grid: _Grid
) -> tuple[np.ndarray, np.ndarray]:
  """Returns the label map `u8[*S]` and the body mask `bool[*S]`."""
  body = _body_mask(rng, grid)
  body_depth = _depth(grid, body)
  organ = _organ_mask(rng, grid) & (body_depth > grid.voxel)
  lesion = np.zeros_like(organ)
  if rng.uniform() < _LESION_PROBABILITY:
    lesion = _lesion_mask(rng, grid, organ)
  vessel = _vessel_mask(rng, grid, organ, body_depth)

  label = np.zeros(grid.shape, np.uint8)
  label[organ] = ORGAN
  label[lesion] = LESION
  label[vessel] = VESSEL
  return label, body


def _render(
  rng: np.random.Generator,
  grid: _Grid,
  label: np.ndarray,
  body: np.ndarray,
) -> np.ndarray:
  """Renders the intensity image `f32[*S, 1]` of a label map.

  Each class gets a per-case random mean intensity and air outside the body
  is darkest. The piecewise-constant image is blurred (partial volume),
  multiplied by a smooth bias field and corrupted by Gaussian noise.
  """
  air = rng.uniform(*_AIR)
  tissue = rng.uniform(*_BODY)
  while True:
    organ = rng.uniform(*_ORGAN)
    vessel = rng.uniform(*_VESSEL)
    if vessel - organ >= _MIN_CONTRAST:
      break
  lesion = organ + rng.choice([-1.0, 1.0]) * rng.uniform(*_LESION_CONTRAST)
  means = np.array([tissue, organ, lesion, vessel])

  image = np.where(body, means[label], air)
  sigma = rng.uniform(*_BLUR_SIGMA_VOXELS) * grid.voxel  # In units.
  image = ndimage.gaussian_filter(image, sigma / grid.spacing, mode="nearest")
  image *= _bias_field(rng, grid)
  image += rng.normal(0.0, rng.uniform(*_NOISE_SIGMA), size=image.shape)
  return image.astype(np.float32)[..., None]


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
  """A uniformly random proper rotation matrix `f[ndim, ndim]`."""
  q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
  q = q * np.sign(np.diag(r))
  if np.linalg.det(q) < 0:
    q[:, 0] = -q[:, 0]
  return q


def _random_direction(rng: np.random.Generator, ndim: int) -> np.ndarray:
  v = rng.normal(size=ndim)
  return v / np.linalg.norm(v)


def _deformed_ellipsoid(
  rng: np.random.Generator,
  grid: _Grid,
  centre: np.ndarray,
  semi_axes: np.ndarray,
  rotation: np.ndarray,
  amplitude: float,
) -> np.ndarray:
  """Inside mask of an ellipsoid with a randomly perturbed radius.

  The boundary radius along direction `n` (in the ellipsoid's normalised
  frame) is `1 + sum_j a_j T_kj(n . w_j)` with Chebyshev polynomials `T_k`
  of order 2 to 4, random unit axes `w_j` and amplitudes `|a_j| <= amplitude`.
  In 2-D this is exactly a sum of Fourier harmonics `cos(k (theta - phi_j))`;
  in 3-D it is a smooth zonal deformation of the sphere.

  Returns:
    `bool[*grid.shape]`.
  """
  local = (grid.coords - centre) @ rotation / semi_axes
  radius = np.linalg.norm(local, axis=-1)
  direction = local / np.maximum(radius, 1e-9)[..., None]
  boundary = np.ones_like(radius)
  for order in (2, 3, 4):
    w = _random_direction(rng, grid.ndim)
    a = rng.uniform(-amplitude, amplitude)
    cosine = np.clip(direction @ w, -1.0, 1.0)
    boundary += a * np.cos(order * np.arccos(cosine))
  return radius <= boundary


def _depth(grid: _Grid, mask: np.ndarray) -> np.ndarray:
  """Distance (in units) from each voxel of `mask` to the nearest outside one.

  Zero outside the mask.
  """
  return ndimage.distance_transform_edt(mask, sampling=grid.spacing)


def _body_mask(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
  """An elliptic cylinder along the first axis (an ellipse in 2-D)."""
  semi_axes = grid.half_extent * rng.uniform(*_BODY_SEMI_AXES, size=grid.ndim)
  if grid.ndim == 3:
    semi_axes[0] = 1e6  # Extends through every slice.
  return _deformed_ellipsoid(
    rng,
    grid,
    centre=np.zeros(grid.ndim),
    semi_axes=semi_axes,
    rotation=np.eye(grid.ndim),
    amplitude=0.01,
  )


def _organ_mask(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
  jitter = rng.uniform(-1.0, 1.0, size=grid.ndim) * _ORGAN_CENTRE_JITTER
  return _deformed_ellipsoid(
    rng,
    grid,
    centre=jitter * grid.half_extent,
    semi_axes=rng.uniform(*_ORGAN_SEMI_AXES, size=grid.ndim),
    rotation=_random_rotation(rng, grid.ndim),
    amplitude=_SHAPE_HARMONIC_AMPLITUDE,
  )


def _lesion_mask(
  rng: np.random.Generator, grid: _Grid, organ: np.ndarray
) -> np.ndarray:
  """A blob whose every voxel has organ voxels all around it."""
  depth = _depth(grid, organ)
  margin = _LESION_MARGIN_VOXELS * grid.voxel
  # The largest extent of the deformed blob, from its centre.
  stretch = 1.1 * (1 + 3 * _SHAPE_HARMONIC_AMPLITUDE)
  radius = rng.uniform(*_LESION_RADIUS)
  semi_axes = radius * rng.uniform(0.9, 1.1, size=grid.ndim)
  candidates = np.flatnonzero(depth >= semi_axes.max() * stretch + margin)
  if candidates.size == 0:
    return np.zeros_like(organ)
  centre = grid.coords.reshape(-1, grid.ndim)[rng.choice(candidates)]
  lesion = _deformed_ellipsoid(
    rng,
    grid,
    centre=centre,
    semi_axes=semi_axes,
    rotation=_random_rotation(rng, grid.ndim),
    amplitude=_SHAPE_HARMONIC_AMPLITUDE,
  )
  # Enforce the "strictly inside" guarantee whatever the deformation did.
  return lesion & (depth > margin)


def _vessel_mask(
  rng: np.random.Generator,
  grid: _Grid,
  organ: np.ndarray,
  body_depth: np.ndarray,
) -> np.ndarray:
  """A tube around a parabolic centre line that avoids the organ.

  The centre line goes through an anchor voxel well away from the organ and
  at least one tube radius inside the body (`body_depth`, from `_depth`).
  Among a few random directions and curvatures, the one whose centre line
  comes closest to the organ least often is kept; voxels near the organ are
  then removed so the vessel never touches it.
  """
  radius = rng.uniform(*_VESSEL_RADIUS)
  gap = _VESSEL_GAP_VOXELS * grid.voxel
  clearance = _depth(grid, ~organ)
  in_body = body_depth > radius
  anchors = np.flatnonzero(in_body & (clearance > radius + gap))
  if anchors.size == 0:
    anchors = np.flatnonzero(in_body)
  anchor = grid.coords.reshape(-1, grid.ndim)[rng.choice(anchors)]

  # Arc parameter covering the whole field of view at sub-voxel steps.
  reach = 2 * grid.half_extent.max()
  max_speed = 1 + 2 * _VESSEL_MAX_CURVATURE * reach
  s = np.arange(-reach, reach, 0.25 * grid.voxel / max_speed)[:, None]
  best_points, best_hits = None, np.inf
  for _ in range(_VESSEL_TRIES):
    direction = _random_direction(rng, grid.ndim)
    normal = _random_direction(rng, grid.ndim)
    normal -= (normal @ direction) * direction
    normal /= np.linalg.norm(normal)
    curvature = rng.uniform(0.0, _VESSEL_MAX_CURVATURE)
    points = anchor + s * direction + curvature * s**2 * normal
    index = grid.to_index(points)
    valid = np.all((index >= 0) & (index < np.asarray(grid.shape)), axis=1)
    index = index[valid]
    hits = np.count_nonzero(clearance[tuple(index.T)] <= radius + gap)
    if hits < best_hits:
      best_points, best_hits = index, hits
    if hits == 0:
      break

  centre_line = np.zeros(grid.shape, bool)
  centre_line[tuple(best_points.T)] = True
  distance = _depth(grid, ~centre_line)
  return (distance <= radius) & (clearance > gap) & (body_depth > 0)


def _bias_field(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
  """A smooth multiplicative field `exp(g . x + x^T H x)`, x in [-1, 1]."""
  x = grid.coords / grid.half_extent
  linear = rng.normal(0.0, _BIAS_LINEAR, size=grid.ndim)
  quadratic = rng.normal(0.0, _BIAS_QUADRATIC, size=(grid.ndim, grid.ndim))
  quadratic = (quadratic + quadratic.T) / 2
  log_field = x @ linear + np.einsum("...i,ij,...j->...", x, quadratic, x)
  return np.exp(np.clip(log_field, -_BIAS_MAX_LOG, _BIAS_MAX_LOG))
