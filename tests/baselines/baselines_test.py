"""Tests of the classical baselines on images whose answer is known.

The phantoms are flat intensity regions plus mild Gaussian noise (std 0.04
against steps of 0.4), small enough for every method to run in well under a
second; each method must recover the regions (Dice > 0.95 per class).
"""

import numpy as np
import pytest

from medseg_jax import baselines
from medseg_jax.baselines import base
from medseg_jax.metrics import overlap

ALL = sorted(baselines.BASELINES)
MULTICLASS = [name for name in ALL if name != "active_contour"]
LEVELS = np.array([0.1, 0.5, 0.9])


def _square_phantom(num_classes: int, seed: int = 0):
  """`f32[32, 32, 1]` image and `i32[32, 32]` label, class k at LEVELS[k]."""
  label = np.zeros((32, 32), np.int32)
  label[6:26, 4:18] = 1
  if num_classes == 3:
    label[10:20, 21:29] = 2
  levels = LEVELS if num_classes == 3 else LEVELS[[0, 2]]
  rng = np.random.default_rng(seed)
  image = levels[label] + rng.normal(0.0, 0.04, label.shape)
  return image[..., None].astype(np.float32), label


def _ball_phantom(seed: int = 0):
  """`f32[16, 16, 16, 1]` image and its label: a bright ball (radius 5.5)."""
  grid = np.mgrid[:16, :16, :16] - 7.5
  label = (np.sum(grid**2, axis=0) <= 5.5**2).astype(np.int32)
  rng = np.random.default_rng(seed)
  image = LEVELS[[0, 2]][label] + rng.normal(0.0, 0.04, label.shape)
  return image[..., None].astype(np.float32), label


def _dice(pred: np.ndarray, label: np.ndarray, num_classes: int):
  counts = overlap.confusion_counts(pred[None], label[None], num_classes)
  counts = {k: np.asarray(v) for k, v in counts.items()}
  return overlap.scores_from_counts(counts)["dice"][0]


def _check_output(pred: np.ndarray, shape, num_classes: int):
  assert pred.shape == shape
  assert pred.dtype == np.int32
  assert pred.min() >= 0 and pred.max() < num_classes


@pytest.mark.parametrize("name", ALL)
def test_binary_2d_recovers_regions(name):
  image, label = _square_phantom(2)
  pred = baselines.get_baseline(name, num_classes=2).predict(image)
  _check_output(pred, label.shape, 2)
  assert np.all(_dice(pred, label, 2) > 0.95)


@pytest.mark.parametrize("name", MULTICLASS)
def test_three_classes_2d_recovers_regions(name):
  image, label = _square_phantom(3)
  pred = baselines.get_baseline(name, num_classes=3).predict(image)
  _check_output(pred, label.shape, 3)
  assert np.all(_dice(pred, label, 3) > 0.95)


@pytest.mark.parametrize("name", ALL)
def test_3d_recovers_ball(name):
  image, label = _ball_phantom()
  pred = baselines.get_baseline(name, num_classes=2).predict(image)
  _check_output(pred, label.shape, 2)
  assert np.all(_dice(pred, label, 2) > 0.95)


@pytest.mark.parametrize("name", ALL)
def test_invert_labels_dark_structure(name):
  # A dark square on a bright background: class 1 is the dark square.
  image, label = _square_phantom(2)
  image = 1.0 - image
  pred = baselines.get_baseline(name, num_classes=2, invert=True).predict(image)
  assert np.all(_dice(pred, label, 2) > 0.95)
  plain = baselines.get_baseline(name, num_classes=2).predict(image)
  np.testing.assert_array_equal(plain, 1 - pred)


def test_random_walker_downsample_keeps_shape_and_regions():
  # The square's edges lie on even coordinates, so halving loses nothing.
  image, label = _square_phantom(2)
  walker = baselines.get_baseline("random_walker", downsample=2)
  pred = walker.predict(image)
  _check_output(pred, label.shape, 2)
  assert np.all(_dice(pred, label, 2) > 0.95)
  # Per-axis factors on a volume: the ball at half resolution in-plane loses
  # boundary detail only.
  image, label = _ball_phantom()
  walker = baselines.get_baseline("random_walker", downsample=(1, 2, 2))
  pred = walker.predict(image)
  _check_output(pred, label.shape, 2)
  assert np.all(_dice(pred, label, 2) > 0.8)


def test_multichannel_averages_channels_or_picks_one():
  image, label = _square_phantom(2)
  # Channel 0 carries the structure, channel 1 is its negative plus 1: the
  # mean is flat, so only `channel=0` can find the square. Intensities are
  # multiples of 2^-10, so 1 - x is exact and the mean exactly 0.5.
  image = np.round(np.clip(image, 0, 1) * 1024) / 1024
  stacked = np.concatenate([image, 1.0 - image], axis=-1).astype(np.float32)
  otsu = baselines.get_baseline("otsu", channel=0)
  assert np.all(_dice(otsu.predict(stacked), label, 2) > 0.95)
  flat = baselines.get_baseline("otsu").predict(stacked)
  _check_output(flat, label.shape, 2)
  # A flat image is one class, as a constant one (see below).
  np.testing.assert_array_equal(flat, np.zeros(label.shape, np.int32))


@pytest.mark.parametrize("name", ALL)
def test_constant_image_is_one_class(name):
  pred = baselines.get_baseline(name).predict(np.full((8, 8, 1), 0.3))
  np.testing.assert_array_equal(pred, np.zeros((8, 8), np.int32))


def test_fit_mapping_assigns_clusters_by_majority_label():
  # Intensity order is bright=vessel(1), mid=background(0), dark=organ(2):
  # the fitted mapping must learn that from the labels.
  classes_at_level = np.array([2, 0, 1])  # Darkest cluster is class 2.
  images, labels = [], []
  for seed in range(3):
    image, clusters = _square_phantom(3, seed=seed)
    images.append(image)
    labels.append(classes_at_level[clusters])
  otsu = baselines.get_baseline("otsu", num_classes=3, fit_mapping=True)
  assert otsu.fit(images, labels) is otsu
  np.testing.assert_array_equal(otsu.mapping_, classes_at_level)
  image, clusters = _square_phantom(3, seed=7)
  pred = otsu.predict(image)
  assert np.all(_dice(pred, classes_at_level[clusters], 3) > 0.95)


def test_fit_mapping_with_more_clusters_than_classes():
  # Three intensity levels, two classes: the mid and bright regions are both
  # foreground, which the intensity order alone cannot express.
  image, clusters = _square_phantom(3)
  label = (clusters > 0).astype(np.int32)
  otsu = baselines.get_baseline(
    "otsu", num_classes=2, num_clusters=3, fit_mapping=True
  )
  otsu.fit([image], [label])
  np.testing.assert_array_equal(otsu.mapping_, [0, 1, 1])
  assert np.all(_dice(otsu.predict(image), label, 2) > 0.95)


def test_fit_mapping_unseen_cluster_keeps_intensity_order():
  # The training case holds two distinct values only, so the brightest of
  # three clusters stays empty; the two others map to background.
  _, label = _square_phantom(2)
  image = LEVELS[[0, 2]][label][..., None]
  otsu = baselines.get_baseline("otsu", num_classes=3, fit_mapping=True)
  otsu.fit([image], [np.zeros_like(label)])
  np.testing.assert_array_equal(otsu.mapping_, [0, 0, 2])


def test_predict_before_fit_raises():
  otsu = baselines.get_baseline("otsu", fit_mapping=True)
  with pytest.raises(RuntimeError, match="call fit"):
    otsu.predict(np.zeros((4, 4, 1)))


def test_fit_is_a_no_op_without_fit_mapping():
  otsu = baselines.get_baseline("otsu")
  assert otsu.fit([], []) is otsu
  assert otsu.mapping_ is None


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="Unknown baseline 'kmeans'") as error:
    baselines.get_baseline("kmeans")
  for name in ALL:
    assert name in str(error.value)


def test_invalid_arguments_raise():
  with pytest.raises(ValueError, match="fit_mapping=True"):
    baselines.get_baseline("otsu", num_classes=2, num_clusters=3)
  with pytest.raises(ValueError, match="two phases"):
    baselines.get_baseline("active_contour", num_classes=3)
  with pytest.raises(ValueError, match="channels-last"):
    baselines.get_baseline("otsu").predict(np.zeros((8, 8)))


def test_seed_markers_take_the_confident_quantiles():
  # Values 0..9, threshold 4.5: per cluster the 40 % farthest from 4.5.
  x = np.arange(10, dtype=np.float64)
  markers = base.seed_markers(x, np.array([4.5]), seed_fraction=0.4)
  np.testing.assert_array_equal(markers, [1, 1, 0, 0, 0, 0, 0, 0, 2, 2])


def test_dice_mapping_keeps_a_thin_structure_that_majority_loses():
  # Cluster 0 holds 60 interior and 40 membrane voxels, cluster 1 holds 100
  # interior voxels. Majority maps both to interior (mean Dice 0.444); the
  # Dice rule maps cluster 0 to membrane: Dice 200/260 and 80/140, mean
  # 0.670, the best of the four mappings ([0, 1]: 0.231, [1, 1]: 0.167).
  votes = np.array([[60, 40], [100, 0]])
  np.testing.assert_array_equal(base.dice_optimal_mapping(votes), [1, 0])
  # The same through fit, on a 1x200 case with that composition.
  label = np.zeros((1, 200), np.int32)
  label[0, :40] = 1
  image = np.ones((1, 200, 1))
  image[0, :100] = 0.0
  fitted = {
    rule: baselines.get_baseline("otsu", fit_mapping=True, mapping_rule=rule)
    .fit([image], [label])
    .mapping_.tolist()
    for rule in ("dice", "majority")
  }
  assert fitted == {"dice": [1, 0], "majority": [0, 0]}
