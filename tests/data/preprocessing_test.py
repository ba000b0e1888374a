"""Tests for volumetric preprocessing (`medseg_jax.data.preprocessing`).

Volumes are small synthetic arrays built here; geometry is checked through
world coordinates (`affine @ index`), the invariant every step must keep.
"""

import dataclasses

import nibabel.orientations
import numpy as np
import pytest
import scipy.ndimage

from medseg_jax.data import checks
from medseg_jax.data import preprocessing
from medseg_jax.data.medical_io import Volume

# Canonical (RAS+) test grid: anisotropic spacing and an off-centre origin.
SPACING = (1.0, 1.5, 2.0)
ORIGIN = (-10.0, 20.0, 5.0)


def _affine(spacing=SPACING, origin=ORIGIN):
  affine = np.eye(4)
  affine[:3, :3] = np.diag(spacing)
  affine[:3, 3] = origin
  return affine


def _volume(data, affine=None, path="/data/case/t1.nii.gz", dims=3):
  affine = _affine() if affine is None else affine
  return Volume(
    data=np.asarray(data), affine=affine, path=path, spatial_dims=dims
  )


def _world(affine, index):
  """`f64[N, 3]` world positions of voxel indices `index` (`[N, dims]`)."""
  index = np.asarray(index, float)
  dims = index.shape[-1]
  return index @ affine[:3, :dims].T + affine[:3, 3]


def _from_code(volume, code):
  """Stores a canonical volume in orientation `code` (e.g. "LPS").

  Stored axis i runs along the world axis and direction named by code[i]:
  the data is flipped and transposed accordingly and the affine adjusted so
  that every voxel keeps its world position.
  """
  letters = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1)}
  letters |= {"S": (2, 1), "I": (2, -1)}
  perm = [letters[c][0] for c in code]
  signs = [letters[c][1] for c in code]
  data = volume.data
  index_map = np.zeros((4, 4))  # Stored index -> canonical index.
  index_map[3, 3] = 1
  for stored_axis, (axis, sign) in enumerate(zip(perm, signs, strict=True)):
    index_map[axis, stored_axis] = sign
    if sign < 0:
      data = np.flip(data, axis)
      index_map[axis, 3] = volume.shape[axis] - 1
  channels = list(range(3, data.ndim))
  data = np.ascontiguousarray(np.transpose(data, perm + channels))
  affine = volume.affine @ index_map
  assert "".join(nibabel.orientations.aff2axcodes(affine)) == code
  return dataclasses.replace(volume, data=data, affine=affine)


def _ball(shape, centre, radius):
  grid = np.indices(shape).astype(float)
  distance = np.sqrt(
    sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
  )
  return distance <= radius


def _dice(a, b):
  return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ------------------------------------------------------------ check_same_grid


def test_check_same_grid_passes_equal_grids():
  image = _volume(np.zeros((4, 5, 6, 2), np.float32))
  label = _volume(np.zeros((4, 5, 6), np.uint8), path="/data/case/seg.nii")
  # Header round-off far below a voxel is tolerated.
  other = _volume(np.ones((4, 5, 6)), _affine() + 1e-6, path="/data/b.nii")
  preprocessing.check_same_grid([image, label, other], case_id="c1")
  preprocessing.check_same_grid([image], case_id="c1")


@pytest.mark.parametrize(
  "shape, affine, match",
  [
    ((4, 5, 7), _affine(), r"shapes differ: \(4, 5, 6\) vs \(4, 5, 7\)"),
    ((4, 5, 6), _affine(spacing=(1.0, 1.5, 2.5)), "spacing"),
    ((4, 5, 6), _affine(origin=(-10.0, 20.0, 6.0)), "origin"),
    ((4, 5, 6), _affine() @ np.diag([-1.0, 1.0, 1.0, 1.0]), "orientation"),
  ],
)
def test_check_same_grid_rejects_different_grids(shape, affine, match):
  image = _volume(np.zeros((4, 5, 6)), path="/data/case/t1.nii.gz")
  label = _volume(np.zeros(shape), affine, path="/data/case/seg.nii.gz")
  with pytest.raises(checks.InvalidExampleError, match=match) as error:
    preprocessing.check_same_grid([image, label], case_id="case_3")
  message = str(error.value)
  assert "case_3" in message
  assert "/data/case/t1.nii.gz" in message
  assert "/data/case/seg.nii.gz" in message


def test_check_same_grid_rejects_2d_with_3d():
  flat = _volume(np.zeros((4, 5)), path="/a.png", dims=2)
  deep = _volume(np.zeros((4, 5, 1)), path="/b.nii")
  with pytest.raises(checks.InvalidExampleError, match="/a.png, /b.nii"):
    preprocessing.check_same_grid([flat, deep], case_id="c")


# --------------------------------------------------------------- to_canonical


@pytest.mark.parametrize(
  "code", ["RAS", "LPS", "LIA", "PSR", "ASL", "IRP", "SAR"]
)
@pytest.mark.parametrize("channels", [(), (2,)])
def test_to_canonical_restores_canonical_volume(code, channels):
  shape = (4, 5, 6, *channels)
  canonical = _volume(
    np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
  )
  stored = _from_code(canonical, code)
  result = preprocessing.to_canonical(stored)
  np.testing.assert_array_equal(result.data, canonical.data)
  np.testing.assert_allclose(result.affine, canonical.affine, atol=1e-9)
  assert result.path == stored.path

  # Every voxel keeps its world position: match voxels by their unique value.
  def world_by_value(volume):
    values = volume.data[..., 0] if channels else volume.data
    index = np.argwhere(np.ones(volume.shape, bool))
    order = np.argsort(values[tuple(index.T)])
    return _world(volume.affine, index[order])

  np.testing.assert_allclose(
    world_by_value(result), world_by_value(stored), atol=1e-9
  )


def test_to_canonical_keeps_2d_volumes():
  image = _volume(np.ones((3, 4)), np.diag([-1.0, 1.0, 1.0, 1.0]), dims=2)
  assert preprocessing.to_canonical(image) is image


# ------------------------------------------------------ foreground_box, crop


def test_foreground_box_and_crop_keep_world_positions():
  data = np.zeros((10, 12, 14, 2), np.float32)
  data[3:6, 4, 5:9, 0] = 1.0
  data[7, 2, 6, 1] = 2.0  # Nonzero in the second channel only.
  image = _volume(data)
  box = preprocessing.foreground_box(image)
  assert box == (slice(3, 8), slice(2, 5), slice(5, 9))
  cropped = preprocessing.crop(image, box)
  assert cropped.shape == (5, 3, 4)
  index = np.argwhere(np.ones(cropped.shape, bool))
  start = np.array([s.start for s in box])
  np.testing.assert_allclose(
    _world(cropped.affine, index), _world(image.affine, index + start)
  )
  np.testing.assert_array_equal(
    cropped.data[tuple(index.T)], data[tuple((index + start).T)]
  )
  assert np.all(cropped.spacing == image.spacing)
  # A margin grows the box but stops at the array edges.
  assert preprocessing.foreground_box(image, margin=4) == (
    slice(0, 10),
    slice(0, 9),
    slice(1, 13),
  )


def test_foreground_box_of_empty_volume_is_everything():
  image = _volume(np.zeros((3, 4, 5)))
  assert preprocessing.foreground_box(image, 2) == (
    slice(0, 3),
    slice(0, 4),
    slice(0, 5),
  )


def test_foreground_box_2d():
  data = np.zeros((6, 7), np.uint8)
  data[2, 3:5] = 1
  image = _volume(data, dims=2)
  box = preprocessing.foreground_box(image, margin=1)
  assert box == (slice(1, 4), slice(2, 6))
  cropped = preprocessing.crop(image, box)
  np.testing.assert_allclose(
    _world(cropped.affine, [[0, 0]]), _world(image.affine, [[1, 2]])
  )


# ------------------------------------------------------------------- resample


def _corner_and_centre(volume):
  """World positions of the grid's outer corner points and its centre."""
  shape = np.asarray(volume.shape, float)
  return (
    _world(volume.affine, [-0.5 * np.ones(len(shape)), shape - 0.5]),
    _world(volume.affine, [(shape - 1) / 2]),
  )


@pytest.mark.parametrize(
  "shape, target, new_shape",
  [
    ((20, 30, 16), (2.0, 1.5, 1.0), (10, 30, 32)),  # Exactly divisible.
    ((21, 31, 15), (2.5, 1.2, 3.0), (8, 39, 10)),  # Rounded voxel counts.
  ],
)
@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_grid_geometry(shape, target, new_shape, order):
  image = _volume(np.random.default_rng(0).random(shape).astype(np.float32))
  out = preprocessing.resample(image, target, order=order)
  assert out.shape == new_shape
  assert out.data.dtype == np.float32
  # Same physical extent (corner to corner) and the same centre.
  for before, after in zip(
    _corner_and_centre(image), _corner_and_centre(out), strict=True
  ):
    np.testing.assert_allclose(after, before, atol=1e-9)
  # The spacing reached is the target up to rounding the voxel count.
  extent = np.asarray(shape) * np.asarray(SPACING)
  np.testing.assert_allclose(out.spacing, extent / np.asarray(new_shape))
  tolerance = 0.5 * np.asarray(target) / np.asarray(new_shape) + 1e-12
  assert np.all(np.abs(out.spacing - target) <= tolerance)
  if new_shape == (10, 30, 32):
    np.testing.assert_allclose(out.spacing, target, rtol=1e-12)
  # Still axis-aligned RAS+.
  np.testing.assert_allclose(out.affine[:3, :3], np.diag(out.spacing))


@pytest.mark.parametrize("code", ["LPS", "PSR"])
def test_resample_reoriented_grid_keeps_centre(code):
  """Spacing is per array axis, whatever world axis that axis runs along."""
  canonical = _volume(np.ones((8, 9, 10), np.float32))
  image = _from_code(canonical, code)
  target = (3.0, 2.0, 1.0)
  out = preprocessing.resample(image, target, order=1)
  np.testing.assert_allclose(out.spacing, target, rtol=0.2)
  for before, after in zip(
    _corner_and_centre(image), _corner_and_centre(out), strict=True
  ):
    np.testing.assert_allclose(after, before, atol=1e-9)


def test_resample_labels_nearest_keeps_values_and_dtype():
  rng = np.random.default_rng(1)
  label = rng.choice(np.array([0, 3, 7, 200], np.uint8), size=(9, 11, 13))
  for target in [(2.5, 2.0, 3.1), (0.4, 0.7, 1.3)]:
    out = preprocessing.resample(_volume(label), target, order=0)
    assert out.data.dtype == np.uint8
    assert set(np.unique(out.data)) <= {0, 3, 7, 200}
  # Upsampling by an integer factor copies every voxel into a block.
  big = preprocessing.resample(
    _volume(label, _affine(spacing=(2.0, 2.0, 2.0))), (1.0, 1.0, 1.0), order=0
  )
  np.testing.assert_array_equal(
    big.data, label.repeat(2, 0).repeat(2, 1).repeat(2, 2)
  )


def _interior(image, out):
  """Indices of `out` voxels whose source position lies inside `image`."""
  index = np.argwhere(np.ones(out.shape, bool))
  source = _world(np.linalg.inv(image.affine) @ out.affine, index)
  inside = np.all((source >= 0) & (source <= np.asarray(image.shape) - 1), 1)
  return index[inside], index[~inside]


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize(
  "target", [(1.7, 2.3, 3.0), (0.6, 1.1, 1.3), (2.0, 0.75, 2.0)]
)
def test_resample_keeps_linear_ramp_linear(order, target):
  weights = np.array([0.3, -1.2, 0.5])

  def ramp(affine, shape):
    index = np.argwhere(np.ones(shape, bool))
    values = _world(affine, index) @ weights + 4.0
    return values.reshape(shape)

  image = _volume(ramp(_affine(), (24, 20, 18)).astype(np.float32))
  out = preprocessing.resample(image, target, order=order)
  inside, outside = _interior(image, out)
  expected = ramp(out.affine, out.shape)
  if order == 1:
    # Exact in the interior; only the outermost (clamped) voxels differ.
    np.testing.assert_allclose(
      out.data[tuple(inside.T)], expected[tuple(inside.T)], atol=1e-4
    )
  else:
    # The cubic spline's edge handling bends the ramp near the border only.
    shape = np.asarray(out.shape)
    far = np.all((inside >= 0.25 * shape) & (inside < 0.75 * shape), 1)
    core = inside[far]
    assert len(core) > 0
    np.testing.assert_allclose(
      out.data[tuple(core.T)], expected[tuple(core.T)], atol=1e-2
    )
  assert len(inside) > 0.3 * out.data.size
  # Boundary voxels stay within the input's range (linear) or near it.
  slack = 0.0 if order == 1 else 0.5
  assert out.data.min() >= image.data.min() - slack
  assert out.data.max() <= image.data.max() + slack


def test_resample_cubic_beats_linear_on_smooth_data():
  def smooth(affine, shape):
    world = _world(affine, np.argwhere(np.ones(shape, bool)))
    return np.sin(world @ np.array([0.35, 0.2, 0.15])).reshape(shape)

  image = _volume(smooth(_affine(), (24, 20, 16)).astype(np.float32))
  target = (0.7, 1.1, 1.45)
  errors = {}
  for order in (1, 3):
    out = preprocessing.resample(image, target, order=order)
    assert out.data.dtype == np.float32
    inside, _ = _interior(image, out)
    shape = np.asarray(out.shape)
    core = inside[np.all((inside >= 0.2 * shape) & (inside < 0.8 * shape), 1)]
    error = out.data - smooth(out.affine, out.shape)
    errors[order] = np.abs(error[tuple(core.T)]).max()
  assert errors[3] < 0.01
  assert errors[3] < 0.25 * errors[1]


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_resample_matches_3d_map_coordinates(order):
  """The separable fast path equals one 3-D spline interpolation."""
  rng = np.random.default_rng(order)
  data = rng.normal(size=(13, 17, 11)).astype(np.float32)
  image = _volume(data)
  out = preprocessing.resample(image, (1.6, 0.9, 3.3), order=order)
  index = np.argwhere(np.ones(out.shape, bool))
  source = _world(np.linalg.inv(image.affine) @ out.affine, index)
  expected = scipy.ndimage.map_coordinates(
    data.astype(np.float64), source.T, order=order, mode="nearest"
  ).reshape(out.shape)
  np.testing.assert_allclose(out.data, expected, atol=2e-5)
  # The same grid as scipy's own zoom with aligned voxel corners.
  zoomed = scipy.ndimage.zoom(
    data.astype(np.float64),
    np.asarray(out.shape) / np.asarray(data.shape),
    order=order,
    mode="nearest",
    grid_mode=True,
  )
  np.testing.assert_allclose(out.data, zoomed, atol=2e-5)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_multichannel_matches_per_channel(order):
  rng = np.random.default_rng(2)
  data = rng.integers(0, 5, (10, 9, 8, 3)).astype(np.float32)
  out = preprocessing.resample(_volume(data), (1.4, 2.1, 1.5), order=order)
  assert out.data.shape == (*out.shape, 3)
  for c in range(3):
    single = preprocessing.resample(
      _volume(data[..., c]), (1.4, 2.1, 1.5), order=order
    )
    np.testing.assert_allclose(out.data[..., c], single.data, atol=1e-6)
    np.testing.assert_allclose(out.affine, single.affine)


def test_resample_identity_when_spacing_matches():
  image = _volume(np.random.default_rng(3).random((5, 6, 7)))
  same = preprocessing.resample(image, SPACING, order=3)
  np.testing.assert_array_equal(same.data, image.data)
  np.testing.assert_array_equal(same.affine, image.affine)
  close = preprocessing.resample(image, (1.0, 1.5, 2.0005), order=1)
  np.testing.assert_array_equal(close.data, image.data)


def test_resample_integer_image_gives_float():
  data = np.array([0, 10, 20, 30], np.int16).reshape(4, 1, 1)
  data = np.broadcast_to(data, (4, 2, 2)).copy()
  out = preprocessing.resample(
    _volume(data, _affine(spacing=(2.0, 1.0, 1.0))), (1.0, 1.0, 1.0), order=1
  )
  assert out.data.dtype == np.float32
  np.testing.assert_allclose(
    out.data[:, 0, 0], [0.0, 2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 30.0]
  )


def test_resample_2d():
  data = np.random.default_rng(4).random((10, 12)).astype(np.float32)
  image = _volume(data, _affine(spacing=(0.5, 0.5, 1.0)), dims=2)
  out = preprocessing.resample(image, (1.0, 0.75), order=1)
  assert out.data.shape == (5, 8)
  np.testing.assert_allclose(out.spacing, (1.0, 0.75))
  np.testing.assert_allclose(
    _corner_and_centre(out)[1], _corner_and_centre(image)[1]
  )


@pytest.mark.parametrize(
  "target, match",
  [
    ((1.0, 1.0), "has 2 axes; the volume has 3 spatial axes"),
    ((1.0, 1.0, 1.0, 1.0), "has 4 axes"),
    ((1.0, 0.0, 1.0), "positive"),
  ],
)
def test_resample_rejects_bad_target(target, match):
  image = _volume(np.zeros((4, 4, 4, 2)))
  with pytest.raises(ValueError, match=match):
    preprocessing.resample(image, target, order=1)


# ------------------------------------------------------------------ normalize


def test_normalize_ct_clips_to_window_then_zscores():
  rng = np.random.default_rng(5)
  image = rng.uniform(-3000, 3000, (8, 9, 10)).astype(np.float32)
  out = preprocessing.normalize(image, "ct", window=(-200.0, 400.0))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.std(), 1.0, atol=1e-5)
  clipped = np.clip(image, -200.0, 400.0)
  np.testing.assert_allclose(
    out, (clipped - clipped.mean()) / clipped.std(), atol=1e-5
  )
  # Everything beyond the window lands on the same two values.
  assert np.unique(out[image >= 400.0]).size == 1
  assert np.unique(out[image <= -200.0]).size == 1
  # The default window is [-1000, 1000] HU.
  default = preprocessing.normalize(image, "ct")
  clipped = np.clip(image, -1000.0, 1000.0)
  np.testing.assert_allclose(
    default, (clipped - clipped.mean()) / clipped.std(), atol=1e-5
  )


def test_normalize_mri_uses_foreground_and_zeroes_background():
  rng = np.random.default_rng(6)
  image = np.zeros((10, 10, 10), np.float32)
  brain = _ball(image.shape, (5, 5, 5), 4)
  image[brain] = rng.uniform(100, 900, brain.sum())
  out = preprocessing.normalize(image, "mri")
  assert out.dtype == np.float32
  assert np.all(out[~brain] == 0.0)
  np.testing.assert_allclose(out[brain].mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(out[brain].std(), 1.0, atol=1e-5)
  # An explicit foreground mask (e.g. any channel nonzero) is honoured.
  mask = brain.copy()
  mask[0] = True  # Zero voxels inside the mask count as foreground.
  masked = preprocessing.normalize(image, "mri", foreground=mask)
  assert np.all(masked[~mask] == 0.0)
  np.testing.assert_allclose(masked[mask].mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(masked[mask].std(), 1.0, atol=1e-5)


def test_normalize_other_modes():
  image = np.linspace(-5, 15, 60, dtype=np.float32).reshape(3, 4, 5)
  z = preprocessing.normalize(image, "zscore")
  np.testing.assert_allclose([z.mean(), z.std()], [0.0, 1.0], atol=1e-5)
  unit = preprocessing.normalize(image, "minmax")
  np.testing.assert_allclose([unit.min(), unit.max()], [0.0, 1.0])
  np.testing.assert_array_equal(preprocessing.normalize(image, "none"), image)
  # Constant images do not divide by zero.
  assert np.all(np.isfinite(preprocessing.normalize(np.ones((3, 3)), "ct")))
  assert np.all(preprocessing.normalize(np.zeros((3, 3)), "mri") == 0.0)


def test_normalize_rejects_unknown_mode():
  with pytest.raises(ValueError, match="Unknown normalisation 'pet'"):
    preprocessing.normalize(np.ones((3, 3)), "pet")


# ------------------------------------------------------ Preprocessing.apply


def _case(code="LPS", shape=(40, 44, 38)):
  """A two-modality case with a label, stored in orientation `code`.

  Returns the stored volumes and the canonical ones they came from. The
  "head" is a ball of nonzero intensity; the label has classes 1 and 2.
  """
  head = _ball(shape, np.asarray(shape) / 2, 16)
  grid = np.indices(shape).astype(np.float32)
  t1 = np.where(head, 100 + grid[0], 0).astype(np.float32)
  flair = np.where(head, 500 + 2 * grid[2], 0).astype(np.float32)
  label = np.zeros(shape, np.uint8)
  label[_ball(shape, (20, 20, 19), 10)] = 1
  label[_ball(shape, (20, 33, 19), 4)] = 2
  canonical = [
    _volume(t1, path="/raw/c/t1.nii.gz"),
    _volume(flair, path="/raw/c/flair.nii.gz"),
    _volume(label, path="/raw/c/seg.nii.gz"),
  ]
  stored = [_from_code(v, code) for v in canonical]
  return stored, canonical


def test_apply_end_to_end():
  (t1, flair, label), canonical = _case("LPS")
  steps = preprocessing.Preprocessing(
    canonical=True,
    spacing=(1.5, 2.0, 2.0),
    crop_foreground=True,
    crop_margin=1,
  )
  image, out_label = steps.apply([t1, flair], label, case_id="c")
  assert image.data.dtype == np.float32
  assert out_label.data.dtype == np.uint8
  assert image.data.shape == (*out_label.shape, 2)
  np.testing.assert_allclose(image.affine, out_label.affine)
  # RAS+, at the target spacing.
  assert "".join(nibabel.orientations.aff2axcodes(image.affine)) == "RAS"
  np.testing.assert_allclose(image.spacing, (1.5, 2.0, 2.0), rtol=0.05)
  # Cropped: smaller than the source grid in world extent.
  extent = np.asarray(image.shape) * image.spacing
  source = canonical[0]
  assert np.all(extent < np.asarray(source.shape) * source.spacing)
  assert set(np.unique(out_label.data)) == {0, 1, 2}
  # Channels in input order: the same steps on one modality at a time.
  manual = []
  for volume in canonical[:2]:
    cropped = preprocessing.crop(
      volume, preprocessing.foreground_box(canonical[0], 1)
    )
    manual.append(preprocessing.resample(cropped, (1.5, 2.0, 2.0), order=1))
  for c in range(2):
    np.testing.assert_allclose(image.data[..., c], manual[c].data, atol=1e-4)
    np.testing.assert_allclose(image.affine, manual[c].affine, atol=1e-9)
  # The label's class centroids stay in place in the world (within a voxel).
  for cls in (1, 2):
    before = _world(label.affine, np.argwhere(label.data == cls)).mean(0)
    after = _world(out_label.affine, np.argwhere(out_label.data == cls))
    np.testing.assert_allclose(after.mean(0), before, atol=1.0)


def test_apply_normalizes_each_channel():
  (t1, flair, label), _ = _case("PSR")
  steps = preprocessing.Preprocessing(
    normalization=("mri", "zscore"), crop_foreground=True
  )
  image, _ = steps.apply([t1, flair], label, case_id="c")
  raw, _ = dataclasses.replace(steps, normalization=("none",)).apply(
    [t1, flair], label, case_id="c"
  )
  head = raw.data[..., 0] != 0
  assert np.all(image.data[..., 0][~head] == 0.0)
  np.testing.assert_allclose(image.data[..., 0][head].mean(), 0.0, atol=1e-4)
  np.testing.assert_allclose(image.data[..., 0][head].std(), 1.0, atol=1e-4)
  np.testing.assert_allclose(image.data[..., 1].mean(), 0.0, atol=1e-4)
  with pytest.raises(ValueError, match="3 normalisation modes"):
    preprocessing.Preprocessing(normalization=("mri",) * 3).apply(
      [t1, flair], label, case_id="c"
    )


def test_apply_stacks_channels_of_multichannel_inputs():
  rgb = _volume(np.ones((6, 7, 3), np.uint8) * [1, 2, 3], dims=2)
  extra = _volume(np.full((6, 7), 9.0), dims=2)
  image, label = preprocessing.Preprocessing().apply(
    [rgb, extra], None, case_id="c"
  )
  assert label is None
  np.testing.assert_array_equal(image.data[0, 0], [1, 2, 3, 9])


@pytest.mark.parametrize(
  "data, match",
  [
    (np.full((40, 44, 38), 0.5, np.float32), "non-integer"),
    (np.full((40, 44, 38), 300, np.int16), r"\[300, 300\]"),
    (np.zeros((40, 44, 38, 2), np.uint8), "2 channels"),
  ],
)
def test_apply_rejects_bad_labels(data, match):
  (t1, flair, label), _ = _case("RAS")
  label = dataclasses.replace(label, data=data)
  with pytest.raises(checks.InvalidExampleError, match=match) as error:
    preprocessing.Preprocessing().apply([t1, flair], label, case_id="c9")
  assert "c9" in str(error.value) and "/raw/c/seg.nii.gz" in str(error.value)


def test_apply_rejects_mismatched_modalities():
  (t1, flair, label), _ = _case("RAS")
  flair = dataclasses.replace(flair, data=flair.data[:-1])
  with pytest.raises(checks.InvalidExampleError, match="flair.nii.gz"):
    preprocessing.Preprocessing().apply([t1, flair], label, case_id="c")


# ----------------------------------------------------------- to_original_grid


@pytest.mark.parametrize("code", ["LPS", "PSR", "LIA"])
@pytest.mark.parametrize("spacing", [None, (1.25, 1.875, 2.5), (0.8, 1.2, 1.5)])
def test_to_original_grid_undoes_apply(code, spacing):
  (t1, flair, label), _ = _case(code)
  # A label voxel outside the head is cropped away and comes back as 0.
  stray = np.argwhere(t1.data == 0)[0]
  label.data[tuple(stray)] = 1
  steps = preprocessing.Preprocessing(
    canonical=True, spacing=spacing, crop_foreground=True, crop_margin=1
  )
  image, stored = steps.apply([t1, flair], label, case_id="c")
  # Cropped to the head: a smaller physical volume than the source grid.
  assert np.prod(image.shape) * np.prod(image.spacing) < np.prod(
    t1.shape
  ) * np.prod(t1.spacing)
  back = preprocessing.to_original_grid(
    stored.data, stored.affine, label.affine, label.shape
  )
  assert back.dtype == np.uint8 and back.shape == label.shape
  assert back[tuple(stray)] == 0
  label.data[tuple(stray)] = 0
  if spacing is None or spacing[0] < 1.0:
    # Exact: no resampling, or a finer grid (each source voxel's centre has
    # a stored voxel within half a source voxel, copied from it).
    np.testing.assert_array_equal(back, label.data)
  else:
    # Coarser: only voxels along the class boundaries may flip.
    assert _dice(back == 1, label.data == 1) > 0.95
    assert _dice(back == 2, label.data == 2) > 0.8
    assert set(np.unique(back)) == {0, 1, 2}


def test_to_original_grid_2d_crop_and_resample():
  shape = (48, 56)
  label = _ball(shape, (24, 27), 18).astype(np.uint8)
  original = _volume(label, _affine(spacing=(0.5, 0.5, 1.0)), dims=2)
  cropped = preprocessing.crop(original, preprocessing.foreground_box(original))
  stored = preprocessing.resample(cropped, (0.625, 0.7), order=0)
  back = preprocessing.to_original_grid(
    stored.data, stored.affine, original.affine, shape
  )
  assert _dice(back == 1, label == 1) > 0.95
  unchanged = preprocessing.to_original_grid(
    label, original.affine, original.affine, shape
  )
  assert unchanged is label


def _reference_to_original_grid(prediction, affine, original_affine, shape):
  """Brute force: world position of each original voxel, nearest stored."""
  index = np.argwhere(np.ones(shape, bool))
  world = _world(original_affine, index)
  stored = _world(np.linalg.inv(affine), world)
  nearest = np.round(stored).astype(int)
  inside = np.all((nearest >= 0) & (nearest < prediction.shape), axis=1)
  out = np.zeros(len(index), prediction.dtype)
  out[inside] = prediction[tuple(nearest[inside].T)]
  return out.reshape(shape)


@pytest.mark.parametrize("rotate", [False, True])
def test_to_original_grid_matches_brute_force(rotate):
  rng = np.random.default_rng(7)
  prediction = rng.integers(0, 4, (9, 8, 7)).astype(np.uint8)
  # A stored grid: permuted, flipped, scaled and shifted w.r.t. the source.
  affine = np.array(
    [
      [0.0, -1.7, 0.0, 12.3],
      [0.0, 0.0, 2.2, -4.1],
      [1.3, 0.0, 0.0, 3.7],
      [0.0, 0.0, 0.0, 1.0],
    ]
  )
  original_affine = _affine(spacing=(0.9, 1.1, 1.0), origin=(-3.0, 1.0, 2.0))
  if rotate:  # An oblique source grid takes the general path.
    angle = np.deg2rad(20)
    rotation = np.eye(4)
    rotation[:2, :2] = [
      [np.cos(angle), -np.sin(angle)],
      [np.sin(angle), np.cos(angle)],
    ]
    original_affine = rotation @ original_affine
  shape = (12, 10, 14)
  out = preprocessing.to_original_grid(
    prediction, affine, original_affine, shape
  )
  expected = _reference_to_original_grid(
    prediction, affine, original_affine, shape
  )
  np.testing.assert_array_equal(out, expected)
  assert (out > 0).sum() > 50
