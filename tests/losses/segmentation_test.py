"""Tests for medseg_jax.losses (segmentation losses and registry)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medseg_jax import losses
from medseg_jax.losses import segmentation

LOSS_FNS = {
  "cross_entropy": segmentation.cross_entropy,
  "dice": segmentation.soft_dice,
  "dice_with_background": functools.partial(
    segmentation.soft_dice, include_background=True
  ),
  "ce_dice": segmentation.ce_dice,
}
SHAPES = {2: (3, 8, 8), 3: (2, 4, 4, 4)}  # [B, *S]
C = 4


def _random_inputs(spatial_dims, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  shape = SHAPES[spatial_dims]
  logits = 2.0 * jax.random.normal(k1, shape + (C,))
  labels = jax.random.randint(k2, shape, 0, C)
  mask = jax.random.bernoulli(k3, 0.7, shape)
  return logits, labels, mask


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSS_FNS)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shape_dtype_and_bounds(name, spatial_dims):
  logits, labels, mask = _random_inputs(spatial_dims)
  for m in (None, mask):
    loss = LOSS_FNS[name](logits, labels, m)
    assert loss.shape == (labels.shape[0],)
    assert loss.dtype == jnp.float32
    assert bool(jnp.all(loss >= 0.0))
    if name.startswith("dice"):
      assert bool(jnp.all(loss <= 1.0))


def test_cross_entropy_matches_optax_and_uniform_value():
  logits, labels, _ = _random_inputs(2)
  expected = jnp.mean(
    optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels),
    axis=(1, 2),
  )
  np.testing.assert_allclose(
    segmentation.cross_entropy(logits, labels), expected, rtol=1e-6
  )
  uniform = segmentation.cross_entropy(
    jnp.zeros((2, 4, 4, 5)), labels[:2, :4, :4]
  )
  np.testing.assert_allclose(uniform, np.log(5.0), rtol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("include_background", [False, True])
def test_perfect_prediction(spatial_dims, include_background):
  _, labels, _ = _random_inputs(spatial_dims)
  logits = 50.0 * jax.nn.one_hot(labels, C)
  dice = segmentation.soft_dice(
    logits, labels, include_background=include_background
  )
  np.testing.assert_allclose(dice, 0.0, atol=1e-6)
  np.testing.assert_allclose(
    segmentation.cross_entropy(logits, labels), 0.0, atol=1e-6
  )


def test_perfect_prediction_with_absent_class():
  # Class 3 appears nowhere and is predicted nowhere: D_3 = s / (~0 + s) ~ 1.
  labels = jnp.array([[[0, 1], [2, 2]]])
  logits = 50.0 * jax.nn.one_hot(labels, 4)
  np.testing.assert_allclose(
    segmentation.soft_dice(logits, labels), 0.0, atol=1e-6
  )


def test_disjoint_prediction():
  # Every foreground voxel predicted as another class: no overlap at all.
  labels = jnp.array([[[1, 1, 2, 2], [1, 1, 2, 2]]])
  wrong = jnp.array([[[2, 2, 1, 1], [2, 2, 1, 1]]])
  logits = 50.0 * jax.nn.one_hot(wrong, 3)
  np.testing.assert_allclose(
    segmentation.soft_dice(logits, labels), 1.0, atol=1e-5
  )
  assert float(segmentation.cross_entropy(logits, labels)[0]) > 40.0


def test_dice_hand_computed():
  # Binary, 4 voxels, probabilities of class 1: [0.8, 0.6, 0.3, 0.1] via
  # logits (0, log(p / (1 - p))); labels [1, 1, 0, 0].
  p = jnp.array([0.8, 0.6, 0.3, 0.1])
  logits = jnp.stack([jnp.zeros(4), jnp.log(p / (1 - p))], -1)[None]
  labels = jnp.array([[1, 1, 0, 0]])
  # Class 1: I = 1.4, sum p = 1.8, sum t = 2 -> D = 2.8 / 3.8.
  # Class 0: p0 = [0.2, 0.4, 0.7, 0.9], I = 1.6, sum p = 2.2, sum t = 2 ->
  #   D = 3.2 / 4.2.
  fg = segmentation.soft_dice(logits, labels, smooth=0.0)
  both = segmentation.soft_dice(
    logits, labels, include_background=True, smooth=0.0
  )
  np.testing.assert_allclose(fg, [1 - 2.8 / 3.8], rtol=1e-5)
  np.testing.assert_allclose(both, [1 - (2.8 / 3.8 + 3.2 / 4.2) / 2], rtol=1e-5)


@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("smooth", [1e-5, 1.0])
def test_dice_matches_optax(include_background, smooth):
  # optax's (I + s) / (I + (P - I) / 2 + (T - I) / 2 + s) equals our
  # (2 I + s') / (P + T + s') for s = s' / 2.
  logits, labels, _ = _random_inputs(2)
  ours = segmentation.soft_dice(
    logits, labels, include_background=include_background, smooth=smooth
  )
  theirs = optax.losses.dice_loss(
    logits,
    jax.nn.one_hot(labels, C),
    smooth=smooth / 2,
    ignore_background=not include_background,
  )
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSS_FNS)
def test_mask_excludes_voxels(name):
  logits, labels, mask = _random_inputs(2)
  fn = LOSS_FNS[name]
  # Arbitrary (even out-of-range) labels and logits under the mask must not
  # change the loss.
  labels2 = jnp.where(mask, labels, 255)
  logits2 = jnp.where(mask[..., None], logits, 1e4 * jnp.ones_like(logits))
  np.testing.assert_allclose(
    fn(logits2, labels2, mask), fn(logits, labels, mask), rtol=1e-6
  )
  # A mask of ones is the same as no mask.
  np.testing.assert_allclose(
    fn(logits, labels, jnp.ones_like(mask)), fn(logits, labels), rtol=1e-6
  )
  # Masked loss equals the loss on the valid voxels only (a 1 x N "image").
  for b in range(labels.shape[0]):
    valid = np.asarray(mask[b])
    sub_logits = logits[b][valid][None, :, :]
    sub_labels = labels[b][valid][None, :]
    np.testing.assert_allclose(
      fn(logits, labels, mask)[b], fn(sub_logits, sub_labels)[0], rtol=1e-5
    )


@pytest.mark.parametrize("name", LOSS_FNS)
def test_empty_mask_is_finite(name):
  logits, labels, _ = _random_inputs(2)
  loss = LOSS_FNS[name](logits, labels, jnp.zeros(labels.shape, bool))
  assert bool(jnp.all(jnp.isfinite(loss)))
  grads = jax.grad(lambda z: jnp.sum(LOSS_FNS[name](z, labels, 0 * labels)))(
    logits
  )
  assert bool(jnp.all(grads == 0.0))


@pytest.mark.parametrize("name", LOSS_FNS)
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_gradients_finite(name, scale):
  # scale=1e3 saturates the softmax (extreme logits).
  logits, labels, mask = _random_inputs(2)
  fn = LOSS_FNS[name]
  for m in (None, mask):
    grads = jax.grad(lambda z, m=m: jnp.mean(fn(z, labels, m)))(scale * logits)
    assert bool(jnp.all(jnp.isfinite(grads)))
    if scale == 1.0:
      assert bool(jnp.any(grads != 0.0))
  assert bool(jnp.all(jnp.isfinite(fn(scale * logits, labels, mask))))


@pytest.mark.parametrize("name", LOSS_FNS)
def test_jit_equals_eager(name):
  logits, labels, mask = _random_inputs(3)
  fn = LOSS_FNS[name]
  np.testing.assert_allclose(
    jax.jit(fn)(logits, labels, mask), fn(logits, labels, mask), rtol=1e-6
  )


@pytest.mark.parametrize("name", LOSS_FNS)
def test_vmap_matches_batch(name):
  # Per-example outputs: mapping over single examples gives the same values.
  logits, labels, mask = _random_inputs(2)
  fn = LOSS_FNS[name]
  mapped = jax.vmap(lambda z, y, m: fn(z[None], y[None], m[None])[0])(
    logits, labels, mask
  )
  np.testing.assert_allclose(mapped, fn(logits, labels, mask), rtol=1e-6)


def test_examples_are_independent():
  logits, labels, mask = _random_inputs(2)
  changed = logits.at[0].set(-logits[0])
  for fn in LOSS_FNS.values():
    a, b = fn(logits, labels, mask), fn(changed, labels, mask)
    np.testing.assert_array_equal(a[1:], b[1:])


def test_bfloat16_logits_give_float32_loss():
  logits, labels, _ = _random_inputs(2)
  for fn in LOSS_FNS.values():
    assert fn(logits.astype(jnp.bfloat16), labels).dtype == jnp.float32


def test_ce_dice_is_weighted_sum():
  logits, labels, mask = _random_inputs(2)
  np.testing.assert_allclose(
    segmentation.ce_dice(logits, labels, mask, dice_weight=0.3),
    segmentation.cross_entropy(logits, labels, mask)
    + 0.3 * segmentation.soft_dice(logits, labels, mask),
    rtol=1e-6,
  )


@pytest.mark.parametrize(
  "logits_shape, labels_shape, mask_shape, message",
  [
    ((2, 8, 8, 3), (2, 8, 8, 3), None, "not one-hot"),
    ((2, 8, 8, 3), (2, 8, 4), None, "labels must be"),
    ((2, 8, 8, 3), (2, 8, 8), (2, 8), "mask must"),
    ((8, 3), (8,), None, "at least one spatial"),
  ],
)
def test_shape_errors(logits_shape, labels_shape, mask_shape, message):
  logits = jnp.zeros(logits_shape)
  labels = jnp.zeros(labels_shape, jnp.int32)
  mask = None if mask_shape is None else jnp.ones(mask_shape)
  for fn in LOSS_FNS.values():
    with pytest.raises(ValueError, match=message):
      fn(logits, labels, mask)


def test_float_labels_and_single_class_raise():
  with pytest.raises(ValueError, match="integer"):
    segmentation.cross_entropy(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4)))
  with pytest.raises(ValueError, match="at least 2 classes"):
    segmentation.soft_dice(
      jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4, 4), jnp.int32)
    )


# Registry.


def test_registry_names_and_binding():
  assert set(losses.LOSSES) == {"cross_entropy", "dice", "ce_dice"}
  logits, labels, mask = _random_inputs(2)
  fn = losses.get_loss("dice", include_background=True, smooth=1.0)
  np.testing.assert_allclose(
    fn(logits, labels, mask),
    segmentation.soft_dice(
      logits, labels, mask, include_background=True, smooth=1.0
    ),
  )
  for name in losses.LOSSES:
    assert losses.get_loss(name)(logits, labels).shape == (3,)


def test_registry_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="valid names") as info:
    losses.get_loss("focal")
  for name in losses.LOSSES:
    assert name in str(info.value)


def test_registry_rejects_unknown_option_early():
  with pytest.raises(TypeError, match="dice_weight"):
    losses.get_loss("cross_entropy", dice_weight=2.0)
