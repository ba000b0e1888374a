"""Tests for medseg_jax.losses.boundary_loss (boundary loss on distance maps)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from medseg_jax.data import distance as distance_lib
from medseg_jax.losses import boundary_loss

C = 3


def _inputs(spatial_dims=2, seed=0):
  rng = np.random.default_rng(seed)
  shape = (2,) + (10,) * spatial_dims
  labels = np.zeros(shape, np.int32)
  # Blobs of classes 1 and 2 (class 2 absent from example 1).
  labels[(0,) + (slice(2, 6),) * spatial_dims] = 1
  labels[(0,) + (slice(6, 9),) * spatial_dims] = 2
  labels[(1,) + (slice(3, 8),) * spatial_dims] = 1
  distance = np.stack([distance_lib.signed_distance(y, C) for y in labels])
  logits = 2.0 * rng.standard_normal(shape + (C,)).astype(np.float32)
  mask = (rng.random(shape) > 0.3).astype(np.float32)
  return (
    jnp.asarray(logits),
    jnp.asarray(labels),
    jnp.asarray(mask),
    jnp.asarray(distance),
  )


def _reference(logits, labels, mask, include_background=False):
  """numpy/scipy: probabilities times the signed distance from scipy's
  EDT of each class, averaged over classes and valid voxels."""
  z = np.asarray(logits, np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out = []
  first = 0 if include_background else 1
  for b in range(z.shape[0]):
    terms = []
    for c in range(first, z.shape[-1]):
      region = np.asarray(labels[b]) == c
      if region.any() and not region.all():
        phi = np.where(
          region,
          1.0 - ndimage.distance_transform_edt(region),
          ndimage.distance_transform_edt(~region),
        )
      else:
        phi = np.zeros(region.shape)
      terms.append(p[b, ..., c] * phi)
    per_voxel = np.mean(terms, axis=0)
    valid = np.asarray(mask[b]) > 0
    out.append(per_voxel[valid].mean())
  return np.array(out)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("include_background", [False, True])
def test_boundary_against_scipy_reference(spatial_dims, include_background):
  logits, labels, mask, distance = _inputs(spatial_dims)
  got = boundary_loss.boundary(
    logits,
    labels,
    mask,
    distance=distance,
    include_background=include_background,
  )
  np.testing.assert_allclose(
    got, _reference(logits, labels, mask, include_background), rtol=1e-5
  )


def test_perfect_prediction_is_the_minimum():
  logits, labels, mask, distance = _inputs()
  perfect = boundary_loss.boundary(
    50.0 * jax.nn.one_hot(labels, C), labels, mask, distance=distance
  )
  # The minimum over all p in the simplex: p = 1 where phi < 0, per class.
  phi = np.asarray(distance)[..., 1:]
  lowest = np.minimum(phi, 0).mean(-1)
  m = np.asarray(mask) > 0
  expected = [lowest[b][m[b]].mean() for b in range(2)]
  np.testing.assert_allclose(perfect, expected, atol=1e-5)
  assert bool(jnp.all(perfect < 0))
  for seed in range(3):
    other = 3.0 * jax.random.normal(jax.random.key(seed), logits.shape)
    assert bool(
      jnp.all(
        boundary_loss.boundary(other, labels, mask, distance=distance) > perfect
      )
    )


@pytest.mark.slow
def test_gradients_finite_jit_and_vmap():
  logits, labels, mask, distance = _inputs()
  fn = boundary_loss.boundary
  for z in (
    50.0 * jax.nn.one_hot(labels, C),
    50.0 * jax.nn.one_hot((labels + 1) % C, C),
    1e3 * logits,
  ):
    grads = jax.grad(lambda z: jnp.sum(fn(z, labels, mask, distance=distance)))(
      z
    )
    assert bool(jnp.all(jnp.isfinite(grads)))
  np.testing.assert_allclose(
    jax.jit(fn)(logits, labels, mask, distance=distance),
    fn(logits, labels, mask, distance=distance),
    rtol=1e-6,
  )
  mapped = jax.vmap(
    lambda z, y, m, d: fn(z[None], y[None], m[None], distance=d[None])[0]
  )(logits, labels, mask, distance)
  np.testing.assert_allclose(
    mapped, fn(logits, labels, mask, distance=distance), rtol=1e-6
  )


def test_mask_excludes_voxels():
  logits, labels, mask, distance = _inputs()
  valid = mask[..., None] > 0
  changed = boundary_loss.boundary(
    jnp.where(valid, logits, 1e4),
    jnp.where(mask > 0, labels, 255),
    mask,
    distance=jnp.where(valid, distance, jnp.nan),
  )
  np.testing.assert_allclose(
    changed, boundary_loss.boundary(logits, labels, mask, distance=distance)
  )


def test_distance_shape_is_checked():
  logits, labels, mask, distance = _inputs()
  with pytest.raises(ValueError, match="one signed distance map per class"):
    boundary_loss.boundary(logits, labels, mask, distance=distance[..., :2])
