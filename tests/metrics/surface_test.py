"""Tests for medseg_jax.metrics.surface."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from medseg_jax.metrics import surface

nan = np.nan


def _foreground(scores, c=1):
  return {key: float(scores[key][c]) for key in surface.SURFACE_KEYS}


def _brute_force(pred, label, spacing, tolerance):
  """All pairwise distances between surface voxels, no crop, no tree."""
  spacing = np.asarray(spacing)
  sp = np.argwhere(surface.surface_voxels(pred)) * spacing
  sg = np.argwhere(surface.surface_voxels(label)) * spacing
  pairwise = np.linalg.norm(sp[:, None] - sg[None], axis=-1)
  d_pg, d_gp = pairwise.min(axis=1), pairwise.min(axis=0)
  both = np.concatenate([d_pg, d_gp])
  return {
    "hd95": max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)),
    "hd": both.max(),
    "assd": both.mean(),
    "nsd": np.mean(both <= tolerance),
  }


# ---------------------------------------------------------------------------
# Surfaces.
# ---------------------------------------------------------------------------


def test_surface_voxels_face_connectivity():
  mask = np.ones((5, 5), bool)
  mask[0, 0] = False
  surf = surface.surface_voxels(mask)
  # (1, 1) touches the hole only diagonally: not a surface voxel.
  assert not surf[1, 1]
  # The image border counts as outside.
  assert surf[0, 1] and surf[4, 4] and surf[2, 0]
  np.testing.assert_array_equal(surf[1:4, 1:4], np.zeros((3, 3), bool))
  cube = np.zeros((5, 5, 5), bool)
  cube[1:4, 1:4, 1:4] = True
  assert surface.surface_voxels(cube).sum() == 27 - 1
  assert not surface.surface_voxels(np.zeros((3, 3), bool)).any()


# ---------------------------------------------------------------------------
# Hand-computed cases.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", surface.METHODS)
@pytest.mark.parametrize(
  "shape,spacing", [((9, 11), (0.7, 1.9)), ((6, 7, 8), (3.0, 1.0, 0.5))]
)
def test_identical_masks(shape, spacing, method):
  rng = np.random.default_rng(0)
  label = rng.integers(0, 3, shape).astype(np.int32)
  scores = surface.surface_scores(label, label, 3, spacing, method=method)
  np.testing.assert_array_equal(scores["hd95"], [nan, 0.0, 0.0])
  np.testing.assert_array_equal(scores["hd"], [nan, 0.0, 0.0])
  np.testing.assert_array_equal(scores["assd"], [nan, 0.0, 0.0])
  np.testing.assert_array_equal(scores["nsd"], [nan, 1.0, 1.0])


@pytest.mark.parametrize("method", surface.METHODS)
def test_disjoint_masks_2d(method):
  # One row, spacing 0.5 mm along it: every voxel is a surface voxel.
  label = np.array([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
  pred = np.array([[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]])
  got = _foreground(
    surface.surface_scores(pred, label, 2, (1.0, 0.5), method=method)
  )
  # pred -> label: columns 7, 8, 9 are 5, 6, 7 voxels from column 2; the
  # other way is the mirror image: {2.5, 3.0, 3.5} mm both ways.
  # P95 of 3 values: position 0.95 * 2 = 1.9, 3.0 + 0.9 * 0.5 = 3.45.
  np.testing.assert_allclose(got["hd95"], 3.45)
  assert got["hd"] == 3.5
  np.testing.assert_allclose(got["assd"], 3.0)
  assert got["nsd"] == 0.0
  loose = surface.surface_scores(pred, label, 2, (1.0, 0.5), tolerance_mm=3.0)
  assert loose["nsd"][1] == 4 / 6  # 2.5 and 3.0 mm, both ways.


@pytest.mark.parametrize("method", surface.METHODS)
def test_disjoint_cubes_3d(method):
  # Two 2x2x2 cubes 4 slices apart along a 3 mm axis.
  label = np.zeros((8, 2, 2), np.int32)
  pred = np.zeros((8, 2, 2), np.int32)
  label[0:2] = 1
  pred[5:7] = 1
  got = _foreground(
    surface.surface_scores(pred, label, 2, (3.0, 1.0, 1.0), method=method)
  )
  # Distances 12 mm (slices 5 and 1) and 15 mm, four voxels each way.
  assert got["hd95"] == 15.0
  assert got["hd"] == 15.0
  assert got["assd"] == 13.5
  assert got["nsd"] == 0.0


def test_square_shifted_one_row_hand_computed():
  label = np.zeros((8, 8), np.int32)
  label[2:6, 2:6] = 1
  pred = np.roll(label, 1, axis=0)
  got = _foreground(surface.surface_scores(pred, label, 2, (3.0, 1.0)))
  # pred -> label, the 12 voxels of pred's ring: row 3 gives 0, 1, 1, 0
  # (its middle voxels are 1 mm from label's side columns), rows 4-5 give
  # 0 x 4, row 6 (outside label) gives 3 x 4. label -> pred mirrors it.
  # ASSD = (2 + 12) * 2 / 24; NSD(1 mm) = 16 / 24.
  assert got["hd95"] == 3.0
  assert got["hd"] == 3.0
  np.testing.assert_allclose(got["assd"], 28 / 24)
  np.testing.assert_allclose(got["nsd"], 16 / 24)


@pytest.mark.parametrize("method", surface.METHODS)
@pytest.mark.parametrize("ndim", [2, 3])
def test_one_voxel_shift_gives_spacing_along_axis(ndim, method):
  spacings = {2: (3.0, 0.5), 3: (3.0, 1.0, 0.5)}[ndim]
  label = np.zeros((10,) * ndim, np.int32)
  label[(slice(3, 7),) * ndim] = 1
  for axis, step in itertools.product(range(ndim), (1, -1)):
    pred = np.roll(label, step, axis=axis)
    got = _foreground(
      surface.surface_scores(
        pred,
        label,
        2,
        spacings,
        tolerance_mm=spacings[axis],
        method=method,
      )
    )
    # The face that left the label is one voxel from its old place, and no
    # surface voxel is farther: HD95 = HD = the spacing along the shift.
    assert got["hd95"] == spacings[axis], (axis, step)
    assert got["hd"] == spacings[axis], (axis, step)
    assert 0 < got["assd"] < spacings[axis]
    assert got["nsd"] == 1.0


def test_anisotropic_spacing_follows_axes():
  # Transposing the arrays and the spacing together changes nothing.
  rng = np.random.default_rng(3)
  label = (ndimage.gaussian_filter(rng.random((8, 10, 12)), 1.5) > 0.5).astype(
    np.int32
  )
  pred = np.roll(label, (1, -1, 2), axis=(0, 1, 2))
  spacing = np.array([3.0, 1.2, 0.6])
  base = surface.surface_scores(pred, label, 2, spacing)
  for perm in [(2, 0, 1), (1, 2, 0)]:
    moved = surface.surface_scores(
      pred.transpose(perm), label.transpose(perm), 2, spacing[list(perm)]
    )
    for key in surface.SURFACE_KEYS:
      np.testing.assert_allclose(moved[key], base[key], rtol=1e-12)


# ---------------------------------------------------------------------------
# Empty-set policy.
# ---------------------------------------------------------------------------


def test_empty_policy():
  # Class 1 in both, class 2 in neither, class 3 predicted only, class 4 in
  # the ground truth only.
  label = np.array([[0, 1, 1, 0, 0, 4]])
  pred = np.array([[0, 1, 1, 3, 0, 0]])
  scores = surface.surface_scores(pred, label, 5, (1.0, 1.0))
  np.testing.assert_array_equal(scores["hd95"], [nan, 0, 0, nan, nan])
  np.testing.assert_array_equal(scores["hd"], [nan, 0, 0, nan, nan])
  np.testing.assert_array_equal(scores["assd"], [nan, 0, 0, nan, nan])
  np.testing.assert_array_equal(scores["nsd"], [nan, 1, 1, 0, 0])
  # Background on request; classes left out are NaN.
  scores = surface.surface_scores(pred, label, 5, (1.0, 1.0), classes=[0, 3])
  # Background: {0, 3, 4} against {0, 4, 5}, distances {0, 0, 1} both
  # ways; P95 at position 1.9 of 3 sorted values is 0.9.
  np.testing.assert_allclose(scores["hd95"], [0.9, nan, nan, nan, nan])
  np.testing.assert_array_equal(scores["hd"], [1.0, nan, nan, nan, nan])
  np.testing.assert_array_equal(scores["nsd"], [1.0, nan, nan, 0.0, nan])


def test_values_outside_classes_belong_to_none():
  label = np.array([[1, 1, 255, 0]])
  pred = np.array([[1, 1, 0, 255]])
  scores = surface.surface_scores(pred, label, 2, (1.0, 1.0))
  assert scores["hd"][1] == 0.0


# ---------------------------------------------------------------------------
# Methods and cropping against a brute-force reference.
# ---------------------------------------------------------------------------


def _random_pair(shape, seed, num_classes=3):
  rng = np.random.default_rng(seed)
  base = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
  moved = base + 0.6 * ndimage.gaussian_filter(rng.standard_normal(shape), 1)
  edges = np.linspace(0, 1, num_classes + 1)[1:-1]
  label = np.digitize(base, np.quantile(base, edges)).astype(np.int32)
  pred = np.digitize(moved, np.quantile(moved, edges)).astype(np.int32)
  return pred, label


@pytest.mark.parametrize(
  "shape,spacing", [((17, 23), (0.9, 1.6)), ((9, 12, 14), (2.5, 0.8, 1.1))]
)
def test_methods_and_crop_match_brute_force(shape, spacing):
  pred, label = _random_pair(shape, seed=len(shape))
  # Padding with background moves the crop and changes nothing.
  padded = [np.pad(x, [(3, 1)] * len(shape)) for x in (pred, label)]
  for method in surface.METHODS:
    for p, g in ((pred, label), padded):
      got = surface.surface_scores(
        p, g, 3, spacing, tolerance_mm=1.2, method=method
      )
      for c in (1, 2):
        expected = _brute_force(p == c, g == c, spacing, 1.2)
        for key in surface.SURFACE_KEYS:
          np.testing.assert_allclose(
            got[key][c], expected[key], rtol=1e-12, err_msg=(method, key)
          )


def test_surface_distances_directed():
  pred = np.zeros((1, 5), bool)
  label = np.zeros((1, 5), bool)
  pred[0, 1:3] = True
  label[0, 2:5] = True
  for method in surface.METHODS:
    d_pg, d_gp = surface.surface_distances(
      pred, label, (1.0, 2.0), method=method
    )
    np.testing.assert_array_equal(d_pg, [2.0, 0.0])
    np.testing.assert_array_equal(d_gp, [0.0, 2.0, 4.0])


def test_batch_matches_single_cases():
  pred, label = _random_pair((3, 10, 12), seed=5)
  spacing = np.array([[1.0, 1.0], [0.5, 2.0], [3.0, 0.7]])
  batch = surface.surface_scores_batch(pred, label, 3, spacing)
  shared = surface.surface_scores_batch(pred, label, 3, spacing[1])
  for b in range(3):
    single = surface.surface_scores(pred[b], label[b], 3, spacing[b])
    single_shared = surface.surface_scores(pred[b], label[b], 3, spacing[1])
    for key in surface.SURFACE_KEYS:
      assert batch[key].shape == (3, 3)
      np.testing.assert_array_equal(batch[key][b], single[key])
      np.testing.assert_array_equal(shared[key][b], single_shared[key])


def test_per_class_tolerance():
  pred, label = _random_pair((16, 16), seed=6)
  per_class = surface.surface_scores(
    pred, label, 3, (1.0, 1.0), tolerance_mm=[0.0, 0.0, 5.0]
  )
  tight = surface.surface_scores(pred, label, 3, (1.0, 1.0), tolerance_mm=0)
  assert per_class["nsd"][1] == tight["nsd"][1]
  assert per_class["nsd"][2] == 1.0 > tight["nsd"][2]


def test_input_errors():
  x = np.zeros((4, 4), np.int32)
  with pytest.raises(ValueError, match="same shape"):
    surface.surface_scores(x, x[:2], 2, (1.0, 1.0))
  with pytest.raises(ValueError, match="integer"):
    surface.surface_scores(x.astype(np.float32), x, 2, (1.0, 1.0))
  with pytest.raises(ValueError, match="one value per axis"):
    surface.surface_scores(x, x, 2, (1.0, 1.0, 1.0))
  with pytest.raises(ValueError, match="positive"):
    surface.surface_scores(x, x, 2, (1.0, 0.0))
  with pytest.raises(ValueError, match="classes"):
    surface.surface_scores(x, x, 2, (1.0, 1.0), classes=[2])
  with pytest.raises(ValueError, match="tolerance"):
    surface.surface_scores(x, x, 2, (1.0, 1.0), tolerance_mm=-1.0)
  with pytest.raises(ValueError, match="method"):
    surface.surface_scores(x, x, 2, (1.0, 1.0), method="fast")
  with pytest.raises(ValueError, match="non-empty"):
    surface.surface_distances(x == 1, x == 0, (1.0, 1.0))
  with pytest.raises(ValueError, match="spacing"):
    surface.surface_scores_batch(x[None], x[None], 2, np.ones((2, 2)))


# ---------------------------------------------------------------------------
# Values stored from MONAI and DeepMind's surface-distance.
# ---------------------------------------------------------------------------
#
# Computed once (not at test time: neither library is a dependency) with
# MONAI 1.6.1 on torch 2.13.0+cpu and surface-distance 0.1 (DeepMind's,
# github.com/deepmind/surface-distance), numpy 2.4.6, scipy 1.17.1, on the
# cases built below, class by class (classes 1 and 2), one-hot float32
# tensors [1, C, *S] for MONAI:
#
#   monai.metrics.compute_hausdorff_distance(P, G, percentile=95, spacing=sp)
#   monai.metrics.compute_hausdorff_distance(P, G, spacing=sp)
#   monai.metrics.compute_average_surface_distance(
#       P, G, symmetric=True, spacing=sp)
#   monai.metrics.compute_surface_dice(
#       P, G, class_thresholds=[1.5] * (C - 1), spacing=sp)
#
#   d = surface_distance.compute_surface_distances(gt == c, pred == c, sp)
#   surface_distance.compute_robust_hausdorff(d, 95)   # and 100 for HD
#   surface_distance.compute_surface_dice_at_tolerance(d, 1.5)
#   ASSD: (sum(d_gt_to_pred * areas_gt) + sum(d_pred_to_gt * areas_pred))
#         / (sum(areas_gt) + sum(areas_pred))
#
# Ours matches MONAI exactly (same definitions; MONAI rounds to float32).
# DeepMind's surfaces are area-weighted surfels on the voxel corners and its
# percentile does not interpolate, so on smooth shapes it agrees within one
# voxel for HD95/HD, half a voxel for ASSD and 0.15 for NSD; on jagged
# masks such as the noisy cases the two differ by more (e.g. HD95 7.14 mm
# there against 3.29 mm here for class 2 of the 2-D noisy case), so only
# the smooth cases are compared with DeepMind.

TOLERANCE_MM = 1.5


def _noisy_case(shape, seed):
  rng = np.random.default_rng(seed)
  base = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
  noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=1.5)
  moved = base + 0.5 * base.std() / noise.std() * noise

  def classes(field):
    edges = np.quantile(field, [0.55, 0.8])
    return np.digitize(field, edges).astype(np.int32)

  return classes(moved), classes(base)


def _smooth_case(shape, spacing):
  """A ground-truth ellipsoid and a shifted, reshaped predicted one."""
  extent = [n * s for n, s in zip(shape, spacing, strict=True)]
  grid = np.meshgrid(
    *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)],
    indexing="ij",
  )

  def ellipsoid(centre, radii):
    terms = [
      ((x - c * e) / (r * e)) ** 2
      for x, c, r, e in zip(grid, centre, radii, extent, strict=True)
    ]
    return (sum(terms) <= 1.0).astype(np.int32)

  rest = len(shape) - 1
  label = ellipsoid([0.5] * len(shape), [0.3] * len(shape))
  pred = ellipsoid([0.53] + [0.46] * rest, [0.28] + [0.33] * rest)
  return pred, label


# name: (builder, args, spacing, voxels per class of pred and of label).
STORED_CASES = {
  "noisy_2d": (_noisy_case, ((28, 24), 0), (0.7, 1.3), [370, 167, 135]),
  "noisy_3d": (
    _noisy_case,
    ((12, 18, 16), 1),
    (2.5, 0.8, 0.9),
    [1901, 863, 692],
  ),
  "smooth_2d": (_smooth_case, ((40, 48), (0.8, 1.2)), (0.8, 1.2), None),
  "smooth_3d": (
    _smooth_case,
    ((24, 40, 40), (2.0, 0.75, 0.75)),
    (2.0, 0.75, 0.75),
    None,
  ),
}

# Foreground classes only (1, 2 for the noisy cases; 1 for the smooth ones).
MONAI_REFERENCE = {
  "noisy_2d": {
    "hd95": [2.5218899250030518, 3.2899978160858154],
    "hd": [3.733630895614624, 9.552486419677734],
    "assd": [0.483572393655777, 0.5561097264289856],
    "nsd": [0.9448275566101074, 0.9367815852165222],
  },
  "noisy_3d": {
    "hd95": [1.9697715044021606, 2.816025495529175],
    "hd": [8.213403701782227, 5.390732765197754],
    "assd": [0.5527763366699219, 0.492129921913147],
    "nsd": [0.8950345516204834, 0.898444652557373],
  },
  "smooth_2d": {
    "hd95": [3.5999999046325684],
    "hd": [3.9395430088043213],
    "assd": [1.3349300622940063],
    "nsd": [0.5945945978164673],
  },
  "smooth_3d": {
    "hd95": [2.5],
    "hd": [4.0],
    "assd": [1.1324437856674194],
    "nsd": [0.660139262676239],
  },
}

DEEPMIND_REFERENCE = {
  "smooth_2d": {
    "hd95": [3.5999999999999996],
    "hd": [3.9395431207184415],
    "assd": [1.1638730765787573],
    "nsd": [0.6621892230583363],
  },
  "smooth_3d": {
    "hd95": [2.25],
    "hd": [4.0],
    "assd": [0.8800803164761056],
    "nsd": [0.7658649254313187],
  },
}


def _stored(name):
  builder, args, spacing, counts = STORED_CASES[name]
  pred, label = builder(*args)
  if counts is not None:
    # Guards against a change in numpy's random streams.
    np.testing.assert_array_equal(np.bincount(label.ravel()), counts)
    np.testing.assert_array_equal(np.bincount(pred.ravel()), counts)
  num_classes = int(max(pred.max(), label.max())) + 1
  scores = surface.surface_scores(
    pred, label, num_classes, spacing, tolerance_mm=TOLERANCE_MM
  )
  return {key: value[1:] for key, value in scores.items()}, spacing


@pytest.mark.parametrize("name", sorted(MONAI_REFERENCE))
def test_matches_monai(name):
  got, _ = _stored(name)
  for key in surface.SURFACE_KEYS:
    np.testing.assert_allclose(
      got[key], MONAI_REFERENCE[name][key], rtol=1e-6, err_msg=key
    )


@pytest.mark.parametrize("name", sorted(DEEPMIND_REFERENCE))
def test_close_to_deepmind_surface_distance(name):
  got, spacing = _stored(name)
  ref = DEEPMIND_REFERENCE[name]
  voxel = max(spacing)
  np.testing.assert_allclose(got["hd95"], ref["hd95"], atol=voxel)
  np.testing.assert_allclose(got["hd"], ref["hd"], atol=voxel)
  np.testing.assert_allclose(got["assd"], ref["assd"], atol=voxel / 2)
  np.testing.assert_allclose(got["nsd"], ref["nsd"], atol=0.15)
