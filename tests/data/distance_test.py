"""Tests for medseg_jax.data.distance (signed distance maps, host side)."""

import itertools

import numpy as np
import pytest

from configs import common
from configs import unet_synthetic
from medseg_jax.data import distance
from medseg_jax.data import pipeline


def _brute_force(label, num_classes):
  """Signed distance by comparing every pair of voxels."""
  points = np.argwhere(np.ones(label.shape, bool))
  flat = label.reshape(-1)
  out = np.zeros(label.shape + (num_classes,))
  for c in range(num_classes):
    inside = flat == c
    if inside.all() or not inside.any():
      continue
    pairwise = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    to_inside = np.where(inside[None, :], pairwise, np.inf).min(1)
    to_outside = np.where(~inside[None, :], pairwise, np.inf).min(1)
    values = np.where(inside, 1.0 - to_outside, to_inside)
    out[..., c] = values.reshape(label.shape)
  return out


@pytest.mark.parametrize("shape", [(7, 9), (4, 5, 6)])
def test_signed_distance_matches_brute_force(shape):
  rng = np.random.default_rng(0)
  label = rng.integers(0, 3, shape)
  label[label == 2] = rng.integers(0, 2, (label == 2).sum())  # Sparser.
  label.flat[0] = 2
  np.testing.assert_allclose(
    distance.signed_distance(label, 4), _brute_force(label, 4), atol=1e-5
  )


def test_signed_distance_sign_and_absent_classes():
  label = np.zeros((5, 5), np.int32)
  label[1:4, 1:4] = 1
  phi = distance.signed_distance(label, 3)
  assert phi.shape == (5, 5, 3) and phi.dtype == np.float32
  assert phi[2, 2, 1] == -1.0  # Centre of the square: one voxel deep.
  assert phi[1, 1, 1] == 0.0  # Inner border.
  assert phi[0, 2, 1] == 1.0  # Just outside.
  np.testing.assert_allclose(phi[0, 0, 1], np.sqrt(2))
  np.testing.assert_array_equal(phi[..., 2], 0.0)  # Absent class.
  full = distance.signed_distance(np.ones((3, 3), np.int32), 2)
  np.testing.assert_array_equal(full, 0.0)  # Present everywhere.


def test_transform_adds_one_map_per_example():
  labels = np.random.default_rng(1).integers(0, 3, (2, 6, 6))
  batch = distance.SignedDistanceMaps(3).map({"label": labels, "x": 1})
  assert batch["x"] == 1
  for b in range(2):
    np.testing.assert_array_equal(
      batch["distance"][b], distance.signed_distance(labels[b], 3)
    )


def _boundary_config(data_dir, **overrides):
  config = unet_synthetic.get_config("runlocal")
  config.data_dir = str(data_dir)
  config.data.patch_size = (32, 32)
  common.loss_terms(
    config, dict(name="dice"), dict(name="boundary", weight=0.1)
  )
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.slow
def test_pipeline_maps_follow_crop_and_host_augmentation(synthetic_2d_dir):
  config = _boundary_config(
    synthetic_2d_dir,
    augment=[dict(op="affine", p=1.0, rotation=(-30, 30)), dict(op="flip")],
    augment_on="host",
  )
  dataset = pipeline.train_dataset(config, config.data_dir, local_batch_size=2)
  for batch in itertools.islice(iter(dataset), 2):
    assert batch["distance"].shape == (2, 32, 32, 4)
    for b in range(2):
      # The maps describe the label as it was finally cropped and moved.
      np.testing.assert_array_equal(
        batch["distance"][b], distance.signed_distance(batch["label"][b], 4)
      )


def test_no_maps_unless_the_loss_needs_them(synthetic_2d_dir):
  config = _boundary_config(synthetic_2d_dir)
  config.loss = unet_synthetic.get_config("runlocal").loss
  dataset = pipeline.train_dataset(config, config.data_dir, local_batch_size=2)
  assert "distance" not in next(iter(dataset))


def test_geometric_device_augmentation_is_refused(synthetic_2d_dir):
  config = _boundary_config(synthetic_2d_dir, augment=[dict(op="flip")])
  with pytest.raises(ValueError, match="augment_on='host'"):
    pipeline.train_dataset(config, config.data_dir, local_batch_size=2)
  # Intensity-only augmentation on the device leaves the label alone.
  config.augment = [dict(op="gamma", p=0.5)]
  pipeline.train_dataset(config, config.data_dir, local_batch_size=2)
