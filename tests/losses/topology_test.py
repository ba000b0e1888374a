"""Tests for medseg_jax.losses.topology (soft skeleton, soft clDice)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from medseg_jax.losses import segmentation
from medseg_jax.losses import topology


def _tube_2d(size=24, width=3):
  """A horizontal bar plus a vertical branch: `int[1, size, size]`."""
  labels = np.zeros((1, size, size), np.int32)
  mid = size // 2
  labels[0, mid - width // 2 : mid + width // 2 + 1, 2:-2] = 1
  labels[0, 2:mid, mid - width // 2 : mid + width // 2 + 1] = 1
  return jnp.asarray(labels)


def _tube_3d(size=12, width=3):
  labels = np.zeros((1, size, size, size), np.int32)
  mid = size // 2
  half = width // 2
  labels[0, mid - half : mid + half + 1, mid - half : mid + half + 1, 1:-1] = 1
  return jnp.asarray(labels)


def _break(labels, axis_slice):
  """A copy with a gap cut through the tube."""
  return labels.at[axis_slice].set(0)


def _logits(labels, num_classes=2):
  return 40.0 * jax.nn.one_hot(labels, num_classes)


def test_soft_erode_and_dilate_match_scipy_on_binary():
  rng = np.random.default_rng(0)
  x = (rng.random((1, 9, 11)) > 0.4).astype(np.float32)
  cross = ndimage.generate_binary_structure(2, 1)
  eroded = topology.soft_erode(jnp.asarray(x)[..., None])[0, ..., 0]
  dilated = topology.soft_dilate(jnp.asarray(x)[..., None])[0, ..., 0]
  # scipy's erosion treats the outside as foreground with border_value=1.
  np.testing.assert_array_equal(
    eroded, ndimage.binary_erosion(x[0], cross, border_value=1)
  )
  np.testing.assert_array_equal(
    dilated, ndimage.binary_dilation(x[0], np.ones((3, 3)))
  )


@pytest.mark.parametrize("width", [5, 7])
def test_soft_skeleton_of_thick_bar_is_its_centre_line(width):
  x = np.zeros((1, 21, 40, 1), np.float32)
  top = 10 - width // 2
  x[0, top : top + width, 5:35] = 1.0
  skeleton = np.asarray(topology.soft_skeleton(jnp.asarray(x), iterations=5))
  skeleton = skeleton[0, ..., 0]
  assert skeleton.min() >= 0.0 and skeleton.max() <= 1.0
  # The centre row is covered along the bar, away from its ends.
  assert skeleton[10, 5 + width : 35 - width].min() > 0.99
  # Nearly all skeleton mass lies on the centre row, the rest near the ends.
  on_centre = skeleton[10].sum()
  assert on_centre / skeleton.sum() > 0.7
  rows = np.nonzero(skeleton[:, 5 + width : 35 - width].max(axis=1))[0]
  np.testing.assert_array_equal(rows, [10])


def test_soft_skeleton_needs_enough_iterations():
  # A bar of width 7 has radius 3: with 1 iteration only its outer layers
  # survive, not a thin line.
  x = np.zeros((1, 21, 40, 1), np.float32)
  x[0, 7:14, 5:35] = 1.0
  thin = topology.soft_skeleton(jnp.asarray(x), iterations=1)[0, ..., 0]
  assert float(thin[10, 15:25].max()) < 0.5


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cldice_tube_against_itself_is_minimal_and_broken_is_not(
  spatial_dims,
):
  if spatial_dims == 2:
    labels = _tube_2d()
    broken = _break(labels, (0, slice(None), slice(16, 18)))
  else:
    labels = _tube_3d()
    broken = _break(labels, (0, slice(None), slice(None), slice(5, 7)))
  itself = topology.cldice(_logits(labels), labels)
  np.testing.assert_allclose(itself, 0.0, atol=1e-5)
  against_broken = topology.cldice(_logits(broken), labels)
  assert float(against_broken[0]) > 0.02
  # Soft Dice barely notices the gap; clDice (relative to the tube's
  # skeleton) notices it more.
  dice = segmentation.soft_dice(_logits(broken), labels)
  assert float(against_broken[0]) > float(dice[0])


def _random_inputs():
  k1, k2 = jax.random.split(jax.random.key(0))
  logits = 2.0 * jax.random.normal(k1, (3, 10, 10, 3))
  labels = jax.random.randint(k2, (3, 10, 10), 0, 3)
  mask = jnp.ones((3, 10, 10)).at[:, :, 8:].set(0)
  return logits, labels, mask


def test_cldice_bounds_and_jit_equals_eager():
  logits, labels, mask = _random_inputs()
  loss = topology.cldice(logits, labels, mask)
  assert loss.shape == (3,)
  assert bool(jnp.all((loss >= 0) & (loss <= 1)))
  np.testing.assert_allclose(
    jax.jit(topology.cldice)(logits, labels, mask), loss, rtol=1e-6
  )


def test_cldice_vmap_matches_batch():
  logits, labels, mask = _random_inputs()
  mapped = jax.vmap(
    lambda z, y, m: topology.cldice(z[None], y[None], m[None])[0]
  )(logits, labels, mask)
  np.testing.assert_allclose(
    mapped, topology.cldice(logits, labels, mask), rtol=1e-6
  )


def test_cldice_gradients_finite():
  logits, labels, _ = _random_inputs()
  wrong = (labels + 1) % 3
  grad_fn = jax.jit(jax.grad(lambda z, t: jnp.sum(topology.cldice(z, t))))
  for target, predicted in (
    (labels, labels),
    (labels, wrong),
    (jnp.zeros_like(labels), jnp.zeros_like(labels)),
  ):
    grads = grad_fn(50.0 * jax.nn.one_hot(predicted, 3), target)
    assert bool(jnp.all(jnp.isfinite(grads)))
  grads = grad_fn(logits, labels)
  assert bool(jnp.all(jnp.isfinite(grads))) and bool(jnp.any(grads != 0))


def test_cldice_mask_excludes_voxels():
  k1, k2 = jax.random.split(jax.random.key(1))
  labels = _tube_2d(16)
  logits = _logits(labels) + jax.random.normal(k1, (1, 16, 16, 2))
  mask = jnp.ones((1, 16, 16)).at[:, 12:, :].set(0)
  changed_labels = jnp.where(mask > 0, labels, 1)
  changed_logits = jnp.where(
    mask[..., None] > 0, logits, 5.0 * jax.random.normal(k2, logits.shape)
  )
  np.testing.assert_allclose(
    topology.cldice(changed_logits, changed_labels, mask),
    topology.cldice(logits, labels, mask),
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    topology.cldice(logits, labels, jnp.ones_like(mask)),
    topology.cldice(logits, labels),
    rtol=1e-6,
  )


def test_cldice_errors():
  with pytest.raises(ValueError, match="iterations"):
    topology.cldice(
      jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4), jnp.int32), iterations=-1
    )
  with pytest.raises(ValueError, match="rank 2 or 3"):
    topology.cldice(jnp.zeros((1, 4, 2)), jnp.zeros((1, 4), jnp.int32))
