"""Tests for medseg_jax.metrics.overlap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax.metrics import overlap


def _counts_np(counts):
  return {k: np.asarray(v) for k, v in counts.items()}


def test_identical():
  labels = jnp.array([[[0, 1, 1], [2, 2, 0]]])  # [1, 2, 3]
  counts = _counts_np(overlap.confusion_counts(labels, labels, 3))
  np.testing.assert_array_equal(counts["tp"], [[2, 2, 2]])
  np.testing.assert_array_equal(counts["fp"], [[0, 0, 0]])
  np.testing.assert_array_equal(counts["fn"], [[0, 0, 0]])
  np.testing.assert_array_equal(counts["tn"], [[4, 4, 4]])
  scores = overlap.scores_from_counts(counts)
  for key in overlap.SCORE_KEYS:
    np.testing.assert_array_equal(scores[key], np.ones((1, 3)))


def test_disjoint():
  labels = jnp.array([[1, 1, 0, 0]])
  pred = jnp.array([[0, 0, 1, 1]])
  counts = _counts_np(overlap.confusion_counts(pred, labels, 2))
  np.testing.assert_array_equal(counts["tp"], [[0, 0]])
  np.testing.assert_array_equal(counts["fp"], [[2, 2]])
  np.testing.assert_array_equal(counts["fn"], [[2, 2]])
  np.testing.assert_array_equal(counts["tn"], [[0, 0]])
  scores = overlap.scores_from_counts(counts)
  for key in ("dice", "iou", "sensitivity", "precision", "specificity"):
    np.testing.assert_array_equal(scores[key], [[0.0, 0.0]])


def test_partial_overlap_hand_computed():
  # 3x3 image, class 1: labels cover 4 voxels, prediction 3, 2 shared.
  labels = jnp.array([[[1, 1, 0], [1, 1, 0], [0, 0, 0]]])
  pred = jnp.array([[[1, 0, 0], [1, 0, 1], [0, 0, 0]]])
  counts = _counts_np(overlap.confusion_counts(pred, labels, 2))
  # Class 1: tp 2, fp 1, fn 2, tn 4. Class 0 mirrors it: tp 4, fp 2, fn 1.
  np.testing.assert_array_equal(counts["tp"], [[4, 2]])
  np.testing.assert_array_equal(counts["fp"], [[2, 1]])
  np.testing.assert_array_equal(counts["fn"], [[1, 2]])
  np.testing.assert_array_equal(counts["tn"], [[2, 4]])
  scores = overlap.scores_from_counts(counts)
  np.testing.assert_allclose(scores["dice"][0, 1], 4 / 7)  # 2*2/(4+1+2)
  np.testing.assert_allclose(scores["iou"][0, 1], 2 / 5)
  np.testing.assert_allclose(scores["sensitivity"][0, 1], 2 / 4)
  np.testing.assert_allclose(scores["precision"][0, 1], 2 / 3)
  np.testing.assert_allclose(scores["specificity"][0, 1], 4 / 5)
  np.testing.assert_allclose(scores["dice"][0, 0], 8 / 11)
  # Dice and IoU are tied: IoU = Dice / (2 - Dice).
  d = scores["dice"]
  np.testing.assert_allclose(scores["iou"], d / (2 - d))
  assert scores["dice"].dtype == np.float64


def test_empty_policy():
  # Class 1 absent from both, class 2 predicted but absent from labels,
  # class 3 in labels but not predicted.
  labels = jnp.array([[0, 0, 3, 3]])
  pred = jnp.array([[0, 2, 0, 0]])
  scores = overlap.scores_from_counts(
    _counts_np(overlap.confusion_counts(pred, labels, 4))
  )
  nan = np.nan
  np.testing.assert_array_equal(scores["dice"][0, 1:], [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(scores["iou"][0, 1:], [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(scores["sensitivity"][0, 1:], [nan, nan, 0.0])
  np.testing.assert_array_equal(scores["precision"][0, 1:], [nan, 0.0, nan])
  np.testing.assert_array_equal(scores["specificity"][0, 1:], [1.0, 3 / 4, 1.0])


def test_specificity_nan_without_negatives():
  labels = jnp.ones((1, 5), jnp.int32)
  scores = overlap.scores_from_counts(
    _counts_np(overlap.confusion_counts(labels, labels, 2))
  )
  assert np.isnan(scores["specificity"][0, 1])
  assert scores["specificity"][0, 0] == 1.0  # Class 0: all negatives.


def test_scores_without_warnings():
  counts = {k: np.zeros((2, 3), np.int32) for k in overlap.COUNT_KEYS}
  with np.errstate(all="raise"):
    scores = overlap.scores_from_counts(counts)
  np.testing.assert_array_equal(scores["dice"], np.ones((2, 3)))
  assert np.all(np.isnan(scores["specificity"]))


def test_mask():
  labels = jnp.array([[1, 1, 0, 0, 255]])
  pred = jnp.array([[1, 0, 0, 1, 1]])
  mask = jnp.array([[1, 1, 1, 0, 0]])  # Drops the 4th and ignored voxel.
  counts = _counts_np(overlap.confusion_counts(pred, labels, 2, mask))
  np.testing.assert_array_equal(counts["tp"], [[1, 1]])
  np.testing.assert_array_equal(counts["fp"], [[1, 0]])
  np.testing.assert_array_equal(counts["fn"], [[0, 1]])
  np.testing.assert_array_equal(counts["tn"], [[1, 1]])
  # An all-zero mask (a padded example) counts nothing.
  zero = overlap.confusion_counts(pred, labels, 2, jnp.zeros_like(mask))
  for v in zero.values():
    np.testing.assert_array_equal(v, 0)


def _random_case(shape, num_classes, seed):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  pred = jax.random.randint(k1, shape, 0, num_classes)
  labels = jax.random.randint(k2, shape, 0, num_classes)
  mask = jax.random.bernoulli(k3, 0.8, shape)
  return pred, labels, mask


def _reference_counts(pred, labels, num_classes, mask):
  pred, labels, mask = map(np.asarray, (pred, labels, mask))
  out = {
    k: np.zeros((pred.shape[0], num_classes), np.int64)
    for k in "tp fp fn tn".split()
  }
  for b in range(pred.shape[0]):
    p, g = pred[b][mask[b]], labels[b][mask[b]]
    for c in range(num_classes):
      out["tp"][b, c] = np.sum((p == c) & (g == c))
      out["fp"][b, c] = np.sum((p == c) & (g != c))
      out["fn"][b, c] = np.sum((p != c) & (g == c))
      out["tn"][b, c] = np.sum((p != c) & (g != c))
  return out


@pytest.mark.parametrize("shape", [(3, 6, 5), (2, 4, 5, 6)])
def test_matches_reference_2d_and_3d(shape):
  pred, labels, mask = _random_case(shape, 3, seed=len(shape))
  counts = overlap.confusion_counts(pred, labels, 3, mask)
  expected = _reference_counts(pred, labels, 3, mask)
  for k in overlap.COUNT_KEYS:
    assert counts[k].dtype == jnp.int32
    assert counts[k].shape == (shape[0], 3)
    np.testing.assert_array_equal(counts[k], expected[k])
  # Every valid voxel is exactly one of tp/fp/fn/tn for every class.
  total = sum(np.asarray(counts[k]) for k in overlap.COUNT_KEYS)
  num_valid = np.sum(np.asarray(mask), axis=tuple(range(1, len(shape))))
  np.testing.assert_array_equal(total, np.repeat(num_valid[:, None], 3, 1))


def test_jit_equals_eager():
  pred, labels, mask = _random_case((2, 4, 4, 4), 4, seed=0)
  fn = jax.jit(overlap.confusion_counts, static_argnums=2)
  eager = overlap.confusion_counts(pred, labels, 4, mask)
  jitted = fn(pred, labels, 4, mask)
  for k in overlap.COUNT_KEYS:
    np.testing.assert_array_equal(jitted[k], eager[k])
  np.testing.assert_array_equal(
    jax.jit(overlap.dice_from_counts)(eager),
    overlap.dice_from_counts(eager),
  )


def test_cases_are_independent():
  pred, labels, mask = _random_case((3, 8, 8), 3, seed=1)
  batch = overlap.confusion_counts(pred, labels, 3, mask)
  for b in range(3):
    single = overlap.confusion_counts(
      pred[b : b + 1], labels[b : b + 1], 3, mask[b : b + 1]
    )
    for k in overlap.COUNT_KEYS:
      np.testing.assert_array_equal(batch[k][b : b + 1], single[k])


def test_dice_from_counts_matches_host_policy():
  # Random cases plus the empty cases of the policy table.
  pred, labels, mask = _random_case((4, 6, 6), 5, seed=2)
  counts = overlap.confusion_counts(pred, labels, 5, mask)
  empty = overlap.confusion_counts(
    jnp.array([[0, 2, 0, 0]]), jnp.array([[0, 0, 3, 3]]), 5
  )
  for c in (counts, empty):
    host = overlap.scores_from_counts(_counts_np(c))["dice"]
    device = overlap.dice_from_counts(c)
    assert device.dtype == jnp.float32
    np.testing.assert_allclose(device, host, rtol=1e-6)


def test_input_errors():
  x = jnp.zeros((2, 4, 4), jnp.int32)
  with pytest.raises(ValueError, match="same shape"):
    overlap.confusion_counts(x, x[:, :2], 2)
  with pytest.raises(ValueError, match="integer"):
    overlap.confusion_counts(x.astype(jnp.float32), x, 2)
  with pytest.raises(ValueError, match="mask"):
    overlap.confusion_counts(x, x, 2, jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="lack keys"):
    overlap.scores_from_counts({"tp": np.zeros(2)})


def test_volume_similarity_hand_computed():
  # Class 0: 1 - |2 - 1| / (8 + 2 + 1) = 10 / 11. Class 1: tp 2, fp 1, fn 2:
  # VS = 1 - |1 - 2| / (4 + 1 + 2) = 6 / 7. Class 2: predicted volume 4 in
  # the wrong place against a true volume of 4: VS = 1 although Dice = 0.
  counts = {
    "tp": np.array([[4, 2, 0]]),
    "fp": np.array([[2, 1, 4]]),
    "fn": np.array([[1, 2, 4]]),
    "tn": np.array([[2, 4, 1]]),
  }
  scores = overlap.scores_from_counts(counts)
  np.testing.assert_allclose(scores["volume_similarity"], [[10 / 11, 6 / 7, 1]])
  assert scores["dice"][0, 2] == 0.0
  # Over- and under-segmentation by the same volume score the same.
  swapped = dict(counts, fp=counts["fn"], fn=counts["fp"])
  np.testing.assert_array_equal(
    overlap.scores_from_counts(swapped)["volume_similarity"],
    scores["volume_similarity"],
  )


def test_volume_similarity_empty_policy():
  labels = jnp.array([[0, 0, 3, 3]])
  pred = jnp.array([[0, 2, 0, 0]])
  scores = overlap.scores_from_counts(
    _counts_np(overlap.confusion_counts(pred, labels, 4))
  )
  # Class 1 in neither: 1; class 2 predicted only, class 3 missed: 0.
  np.testing.assert_array_equal(
    scores["volume_similarity"][0, 1:], [1.0, 0.0, 0.0]
  )
  assert set(scores) == set(overlap.SCORE_KEYS)
