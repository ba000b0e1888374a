"""Tests for the synthetic phantom generator."""

import numpy as np
import pytest
from scipy import ndimage

from medseg_jax.data import phantoms

BACKGROUND, ORGAN, LESION, VESSEL = range(4)
SHAPES = {
  "2d": ((128, 128), (1.0, 1.0)),
  "3d": ((24, 40, 40), (2.0, 1.0, 1.0)),
}


def _draw(seed, kind="2d"):
  shape, spacing = SHAPES[kind]
  return phantoms.make_phantom(np.random.default_rng(seed), shape, spacing)


def test_class_names():
  assert phantoms.CLASS_NAMES == ("background", "organ", "lesion", "vessel")
  assert phantoms.NUM_CLASSES == 4


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_shapes_and_dtypes(kind):
  shape, _ = SHAPES[kind]
  image, label = _draw(0, kind)
  assert image.shape == (*shape, 1)
  assert image.dtype == np.float32
  assert label.shape == shape
  assert label.dtype == np.uint8
  assert np.isfinite(image).all()
  assert set(np.unique(label)) <= {0, 1, 2, 3}


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_same_seed_gives_identical_phantoms(kind):
  image_a, label_a = _draw(123, kind)
  image_b, label_b = _draw(123, kind)
  np.testing.assert_array_equal(image_a, image_b)
  np.testing.assert_array_equal(label_a, label_b)
  assert image_a.tobytes() == image_b.tobytes()


def test_different_seeds_give_different_phantoms():
  image_a, label_a = _draw(1)
  image_b, label_b = _draw(2)
  assert not np.array_equal(label_a, label_b)
  assert not np.array_equal(image_a, image_b)


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_anatomy_is_consistent(kind):
  lesions = 0
  for seed in range(12):
    _, label = _draw(seed, kind)
    organ, lesion, vessel = (label == c for c in (ORGAN, LESION, VESSEL))
    assert organ.any(), seed
    assert vessel.any(), seed
    # Strictly inside: every neighbour (diagonals too) of a lesion voxel is
    # organ or lesion.
    full = np.ones((3,) * label.ndim, bool)
    grown = ndimage.binary_dilation(lesion, structure=full)
    assert np.isin(label[grown], (ORGAN, LESION)).all(), seed
    # The vessel never touches the organ (nor the lesion inside it).
    near_vessel = ndimage.binary_dilation(vessel, structure=full)
    assert not np.isin(label[near_vessel], (ORGAN, LESION)).any(), seed
    lesions += lesion.any()
  assert lesions >= 6


def test_lesion_present_in_most_but_not_all_cases():
  present = [
    (
      phantoms.make_phantom(np.random.default_rng(s), (64, 64))[1] == LESION
    ).any()
    for s in range(150)
  ]
  assert 0.7 < np.mean(present) < 0.97


def test_structures_are_large_enough_to_learn_at_128():
  for seed in range(20):
    _, label = _draw(seed)
    lesion = label == LESION
    if lesion.any():
      equivalent_radius = np.sqrt(lesion.sum() / np.pi)
      assert equivalent_radius >= 6.0, seed
    # Half-thickness of the vessel: the deepest point of its distance map.
    vessel_radius = ndimage.distance_transform_edt(label == VESSEL).max()
    assert vessel_radius >= 3.5, seed


def test_contrasts_vary_so_no_global_threshold_separates_classes():
  organ_means, vessel_means, lesion_brighter = [], [], []
  for seed in range(30):
    image, label = _draw(seed)
    image = image[..., 0]
    organ_mean = image[label == ORGAN].mean()
    vessel_mean = image[label == VESSEL].mean()
    # Within a case the classes are clearly apart ...
    assert abs(vessel_mean - organ_mean) > 0.08, seed
    organ_means.append(organ_mean)
    vessel_means.append(vessel_mean)
    if (label == LESION).any():
      lesion_mean = image[label == LESION].mean()
      assert abs(lesion_mean - organ_mean) > 0.08, seed
      lesion_brighter.append(lesion_mean > organ_mean)
  # ... but across cases the organ of one can be brighter than the vessel of
  # another, and lesions are sometimes darker, sometimes brighter.
  assert max(organ_means) > min(vessel_means)
  assert 0 < np.mean(lesion_brighter) < 1


def test_spacing_is_honoured():
  # With 2 mm slices, the same anatomy spans about half as many slices.
  _, fine = phantoms.make_phantom(
    np.random.default_rng(5), (48, 32, 32), (1.0, 1.0, 1.0)
  )
  _, coarse = phantoms.make_phantom(
    np.random.default_rng(5), (24, 32, 32), (2.0, 1.0, 1.0)
  )
  fine_slices = np.flatnonzero((fine == ORGAN).any(axis=(1, 2)))
  coarse_slices = np.flatnonzero((coarse == ORGAN).any(axis=(1, 2)))
  ratio = len(fine_slices) / len(coarse_slices)
  assert 1.6 < ratio < 2.4


@pytest.mark.parametrize(
  "shape, spacing, match",
  [
    ((64,), None, r"shape must have 2 or 3 axes, got \(64,\)"),
    ((4, 8, 8, 8), None, r"shape must have 2 or 3 axes, got \(4, 8, 8, 8\)"),
    (
      (32, 32),
      (1.0, 1.0, 1.0),
      r"spacing \(1\.0, 1\.0, 1\.0\) does not match shape \(32, 32\)",
    ),
  ],
)
def test_rejects_bad_shape_or_spacing(shape, spacing, match):
  with pytest.raises(ValueError, match=match):
    phantoms.make_phantom(np.random.default_rng(0), shape, spacing)
