"""Volumetric preprocessing, run once when a dataset is built.

The steps nnU-Net popularised, as plain NumPy/SciPy functions on
`medical_io.Volume`s, composed by `Preprocessing.apply`:

1. `check_same_grid`: every modality and the label share one voxel grid
   (shape and affine), or the case is rejected with both files named.
2. `to_canonical`: axes permuted and flipped so that array axes run along
   RAS+ (a permutation of voxels, no interpolation).
3. `crop_to_foreground`: optional crop to the bounding box of nonzero voxels
   (skull-stripped MRI is mostly zeros), with a margin.
4. `resample`: to a target spacing, images with linear (order 1) or cubic
   (order 3) interpolation, labels with nearest neighbour.
5. `normalize`: by modality. CT: clip to a window, then z-score. MRI:
   z-score over the foreground (nonzero voxels), background set to 0.

Each step updates the affine, so the stored grid is still placed in the
world; `to_original_grid` maps a prediction on the stored grid back onto
the grid of the source file (nearest neighbour), for writing it out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NoReturn

import numpy as np
import scipy.ndimage

from medseg_jax.data import checks
from medseg_jax.data.medical_io import Volume

MODALITY_NORMALIZATION = ("ct", "mri", "zscore", "minmax", "none")


def _fail(case_id: str, paths: Sequence[str], problem: str) -> NoReturn:
  raise checks.InvalidExampleError(
    f"Invalid example {case_id!r} ({checks.describe_paths(paths)}): {problem}"
  )


def check_same_grid(
  volumes: Sequence[Volume], *, case_id: str, atol_mm: float = 1e-3
) -> None:
  """Raises `InvalidExampleError` unless all volumes share one voxel grid.

  The grids must have the same spatial shape and affines equal within
  `atol_mm` (scaled by the voxel size), so the voxels line up in the world.
  """
  first = volumes[0]
  for other in volumes[1:]:
    paths = (first.path, other.path)
    if other.spatial_dims != first.spatial_dims:
      _fail(
        case_id,
        paths,
        f"{first.spatial_dims}-D and {other.spatial_dims}-D grids do not "
        "match.",
      )
    if other.shape != first.shape:
      _fail(
        case_id,
        paths,
        f"grid shapes differ: {first.shape} vs {other.shape}.",
      )
    tol = atol_mm * max(float(first.spacing.max()), 1.0)
    if not np.allclose(first.affine, other.affine, atol=tol):
      worst = float(np.abs(first.affine - other.affine).max())
      _fail(
        case_id,
        paths,
        f"grids differ in orientation, spacing or origin (affines differ "
        f"by up to {worst:.3g} mm):\n{np.round(first.affine, 4)}\nvs\n"
        f"{np.round(other.affine, 4)}.",
      )


def to_canonical(volume: Volume) -> Volume:
  """Reorders and flips array axes to RAS+ (nibabel's canonical frame)."""
  import nibabel.orientations as orientations  # noqa: PLC0415

  if volume.spatial_dims != 3:
    return volume
  ornt = orientations.io_orientation(volume.affine)
  if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
    return volume
  data = orientations.apply_orientation(volume.data, ornt)
  affine = volume.affine @ orientations.inv_ornt_aff(ornt, volume.shape)
  return dataclasses.replace(
    volume, data=np.ascontiguousarray(data), affine=affine
  )


def foreground_box(volume: Volume, margin: int = 0) -> tuple[slice, ...]:
  """Bounding box of voxels that are nonzero in any channel, plus margin."""
  data = volume.data
  nonzero = data != 0
  if data.ndim > volume.spatial_dims:
    nonzero = nonzero.any(axis=-1)
  if not nonzero.any():
    return tuple(slice(0, s) for s in volume.shape)
  box = []
  for axis, size in enumerate(volume.shape):
    other = tuple(a for a in range(volume.spatial_dims) if a != axis)
    hits = np.flatnonzero(nonzero.any(axis=other))
    box.append(
      slice(
        max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, size)
      )
    )
  return tuple(box)


def crop(volume: Volume, box: Sequence[slice]) -> Volume:
  """Crops the spatial axes to `box`, moving the affine's origin along."""
  shift = np.eye(4)
  for axis, window in enumerate(box):
    shift[axis, 3] = window.start or 0
  return dataclasses.replace(
    volume,
    data=np.ascontiguousarray(volume.data[tuple(box)]),
    affine=volume.affine @ shift,
  )


def resample(volume: Volume, spacing: Sequence[float], *, order: int) -> Volume:
  """Resamples to voxel size `spacing` (mm, array axis order).

  The new grid covers the same physical extent (voxel corners aligned), with
  `round(shape * old / new)` voxels per axis. `order` is the spline order:
  0 nearest (labels), 1 linear, 3 cubic.
  """
  old = volume.spacing[: volume.spatial_dims]
  new = np.asarray(spacing, float)
  if len(new) != volume.spatial_dims:
    raise ValueError(
      f"Target spacing {tuple(spacing)} has {len(new)} axes; the volume has "
      f"{volume.spatial_dims}."
    )
  if np.allclose(old, new, rtol=1e-3):
    return volume
  shape = np.asarray(volume.shape)
  new_shape = np.maximum(np.round(shape * old / new).astype(int), 1)
  factor = shape / new_shape  # Old voxels per new voxel, per axis.
  # Centre of new voxel n sits at old coordinate (n + 0.5) * factor - 0.5.
  coords = [
    (np.arange(n) + 0.5) * f - 0.5
    for n, f in zip(new_shape, factor, strict=True)
  ]
  data = volume.data
  channels = data.shape[volume.spatial_dims :]
  flat = data.reshape(*volume.shape, -1)
  out = np.empty((*new_shape, flat.shape[-1]), data.dtype)
  for c in range(flat.shape[-1]):
    channel = flat[..., c]
    work = channel.astype(np.float32) if order else channel
    # Separable: interpolate one axis at a time.
    for axis, axis_coords in enumerate(coords):
      work = _resample_axis(work, axis, axis_coords, order)
    out[..., c] = work.astype(data.dtype) if order == 0 else work
  out = out.reshape(*new_shape, *channels)
  scale = np.eye(4)
  for axis in range(volume.spatial_dims):
    scale[axis, axis] = factor[axis]
    scale[axis, 3] = 0.5 * factor[axis] - 0.5
  return dataclasses.replace(volume, data=out, affine=volume.affine @ scale)


def _resample_axis(
  data: np.ndarray, axis: int, coords: np.ndarray, order: int
) -> np.ndarray:
  if order == 0:
    index = np.clip(np.round(coords).astype(int), 0, data.shape[axis] - 1)
    return np.take(data, index, axis=axis)
  moved = np.moveaxis(data, axis, 0)
  grid = np.meshgrid(
    coords,
    *[np.arange(s) for s in moved.shape[1:]],
    indexing="ij",
    sparse=True,
  )
  grid = np.broadcast_arrays(*grid)
  out = scipy.ndimage.map_coordinates(
    moved, grid, order=order, mode="nearest", prefilter=order > 1
  )
  return np.moveaxis(out, 0, axis)


def normalize(
  image: np.ndarray,
  mode: str,
  *,
  window: tuple[float, float] | None = None,
  foreground: np.ndarray | None = None,
) -> np.ndarray:
  """Normalises one channel by modality (see the module docstring).

  Args:
    image: `[*S]` one channel.
    mode: one of `MODALITY_NORMALIZATION`.
    window: CT clip range in HU; default `(-1000, 1000)`.
    foreground: `bool[*S]` voxels to take statistics over for `"mri"`;
      default nonzero voxels. Voxels outside are set to 0.
  """
  image = np.asarray(image, np.float32)
  if mode not in MODALITY_NORMALIZATION:
    raise ValueError(
      f"Unknown normalisation {mode!r}; valid: {MODALITY_NORMALIZATION}."
    )
  if mode == "none":
    return image
  if mode == "ct":
    low, high = window or (-1000.0, 1000.0)
    image = np.clip(image, low, high)
    return ((image - image.mean()) / max(float(image.std()), 1e-6)).astype(
      np.float32
    )
  if mode == "minmax":
    low, high = float(image.min()), float(image.max())
    return ((image - low) / max(high - low, 1e-6)).astype(np.float32)
  if mode == "zscore":
    return ((image - image.mean()) / max(float(image.std()), 1e-6)).astype(
      np.float32
    )
  # MRI: statistics inside the foreground only.
  select = image != 0 if foreground is None else foreground
  if not select.any():
    select = np.ones_like(image, bool)
  values = image[select]
  out = (image - values.mean()) / max(float(values.std()), 1e-6)
  return np.where(select, out, 0.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """What a builder does to each case before storing it.

  Attributes:
    canonical: reorient 3-D volumes to RAS+.
    spacing: target voxel size in mm (array axis order, after reorientation);
      None keeps each case's own.
    image_order: spline order for images (1 linear, 3 cubic).
    normalization: one `MODALITY_NORMALIZATION` entry per channel, or one
      for all channels.
    ct_window: clip range for `"ct"` channels.
    crop_foreground: crop to the nonzero bounding box of the image.
    crop_margin: voxels kept around that box.
  """

  canonical: bool = True
  spacing: tuple[float, ...] | None = None
  image_order: int = 1
  normalization: tuple[str, ...] = ("none",)
  ct_window: tuple[float, float] | None = None
  crop_foreground: bool = False
  crop_margin: int = 2

  def apply(
    self,
    images: Sequence[Volume],
    label: Volume | None,
    *,
    case_id: str,
  ) -> tuple[Volume, Volume | None]:
    """Checks grids, stacks channels and runs the steps.

    Args:
      images: one volume per modality (each `[*S]` or `[*S, C]`).
      label: the label grid, or None for unlabelled cases.
      case_id: quoted in errors.

    Returns:
      `(image, label)`: image `f32[*S', C]`, label as stored (same grid).
    """
    check_same_grid(
      list(images) + ([label] if label is not None else []), case_id=case_id
    )
    first = images[0]
    channels = []
    for volume in images:
      data = volume.data
      if data.ndim == volume.spatial_dims:
        data = data[..., None]
      channels.append(np.asarray(data, np.float32))
    image = dataclasses.replace(first, data=np.concatenate(channels, axis=-1))
    if label is not None:
      label_data = np.asarray(label.data)
      if label_data.ndim > label.spatial_dims:
        if label_data.shape[-1] != 1:
          _fail(
            case_id,
            [label.path],
            f"label has {label_data.shape[-1]} channels; expected one.",
          )
        label_data = label_data[..., 0]
      if label_data.dtype.kind == "f":
        rounded = np.round(label_data)
        if not np.array_equal(rounded, label_data):
          _fail(
            case_id,
            [label.path],
            "label has non-integer values; expected class ids.",
          )
        label_data = rounded
      if label_data.size and (label_data.min() < 0 or label_data.max() > 255):
        _fail(
          case_id,
          [label.path],
          f"label values span [{label_data.min()}, {label_data.max()}]; "
          "expected class ids in [0, 255].",
        )
      label = dataclasses.replace(label, data=label_data.astype(np.uint8))

    if self.canonical:
      image = to_canonical(image)
      label = to_canonical(label) if label is not None else None
    if self.crop_foreground:
      box = foreground_box(image, self.crop_margin)
      image = crop(image, box)
      label = crop(label, box) if label is not None else None
    if self.spacing is not None:
      image = resample(image, self.spacing, order=self.image_order)
      if label is not None:
        label = resample(label, self.spacing, order=0)

    modes = self.normalization
    num_channels = image.data.shape[-1]
    if len(modes) == 1:
      modes = modes * num_channels
    if len(modes) != num_channels:
      raise ValueError(
        f"{len(modes)} normalisation modes {modes} for {num_channels} channels."
      )
    foreground = np.any(image.data != 0, axis=-1)
    data = np.stack(
      [
        normalize(
          image.data[..., c],
          mode,
          window=self.ct_window,
          foreground=foreground if mode == "mri" else None,
        )
        for c, mode in enumerate(modes)
      ],
      axis=-1,
    )
    image = dataclasses.replace(image, data=data)
    return image, label


def to_original_grid(
  prediction: np.ndarray,
  affine: np.ndarray,
  original_affine: np.ndarray,
  original_shape: Sequence[int],
) -> np.ndarray:
  """Maps a label map on a stored grid back to the source file's grid.

  Nearest neighbour through world coordinates: for each voxel of the
  original grid, the stored voxel at the same world position (voxels
  outside the stored grid, e.g. cropped away, get 0).

  Args:
    prediction: `int[*S]` on the stored grid (placed by `affine`).
    affine: `4 x 4` voxel -> world of the stored grid.
    original_affine: `4 x 4` of the source file's grid.
    original_shape: spatial shape of the source file's grid.
  """
  prediction = np.asarray(prediction)
  dims = prediction.ndim
  original_shape = tuple(int(s) for s in original_shape)
  mapping = np.linalg.inv(affine) @ original_affine
  if np.allclose(mapping, np.eye(4)) and prediction.shape == original_shape:
    return prediction
  linear = mapping[:dims, :dims]
  offset = mapping[:dims, 3]
  if np.allclose(linear - np.diag(np.diag(linear)), 0):
    # Axis-aligned (the common case): index each axis separately.
    index = []
    for axis in range(dims):
      src = np.round(
        np.arange(original_shape[axis]) * linear[axis, axis] + offset[axis]
      ).astype(int)
      index.append(src)
    valid = [(i >= 0) & (i < prediction.shape[a]) for a, i in enumerate(index)]
    clipped = [
      np.clip(i, 0, prediction.shape[a] - 1) for a, i in enumerate(index)
    ]
    out = prediction[np.ix_(*clipped)]
    mask = np.ones(original_shape, bool)
    for axis, inside in enumerate(valid):
      shape = [1] * dims
      shape[axis] = -1
      mask &= inside.reshape(shape)
    return np.where(mask, out, 0).astype(prediction.dtype)
  grid = np.indices(original_shape).reshape(dims, -1).astype(float)
  src = linear @ grid + offset[:, None]
  out = scipy.ndimage.map_coordinates(
    prediction, src, order=0, mode="constant", cval=0
  )
  return out.reshape(original_shape).astype(prediction.dtype)
