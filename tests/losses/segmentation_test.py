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
  "focal": segmentation.focal,
  "focal_alpha": functools.partial(
    segmentation.focal, gamma=1.5, alpha=(0.1, 0.2, 0.3, 0.4)
  ),
  "tversky": segmentation.tversky,
  "focal_tversky": segmentation.focal_tversky,
  "generalized_dice": segmentation.generalized_dice,
}
# Losses that lie in [0, 1].
BOUNDED = ("dice", "tversky", "focal_tversky", "generalized_dice")
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
    if name.startswith(BOUNDED):
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
  assert set(losses.LOSSES) == {
    "cross_entropy",
    "dice",
    "ce_dice",
    "focal",
    "tversky",
    "focal_tversky",
    "generalized_dice",
    "cldice",
    "boundary",
  }
  logits, labels, mask = _random_inputs(2)
  fn = losses.get_loss("dice", include_background=True, smooth=1.0)
  np.testing.assert_allclose(
    fn(logits, labels, mask),
    segmentation.soft_dice(
      logits, labels, mask, include_background=True, smooth=1.0
    ),
  )
  for name in losses.LOSSES:
    extra = losses.EXTRA_INPUTS.get(name, ())
    inputs = {k: jnp.zeros(logits.shape) for k in extra}
    assert losses.get_loss(name)(logits, labels, **inputs).shape == (3,)


def test_registry_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="valid names") as info:
    losses.get_loss("lovasz")
  for name in losses.LOSSES:
    assert name in str(info.value)


def test_registry_rejects_unknown_option_early():
  with pytest.raises(TypeError, match="dice_weight"):
    losses.get_loss("cross_entropy", dice_weight=2.0)


# Focal, Tversky, focal Tversky, generalised Dice.

PERFECT_AT_ZERO = ("focal", "tversky", "focal_tversky", "generalized_dice")


@pytest.mark.parametrize("name", PERFECT_AT_ZERO)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_new_losses_perfect_prediction_is_minimal(name, spatial_dims):
  logits, labels, mask = _random_inputs(spatial_dims)
  fn = LOSS_FNS[name]
  perfect = fn(50.0 * jax.nn.one_hot(labels, C), labels, mask)
  np.testing.assert_allclose(perfect, 0.0, atol=1e-5)
  assert bool(jnp.all(fn(logits, labels, mask) > perfect + 1e-3))


@pytest.mark.parametrize("name", PERFECT_AT_ZERO)
def test_new_losses_gradients_finite_at_extremes(name):
  # Perfect, all-wrong and empty (no foreground, everything predicted as
  # background) predictions, with saturated logits.
  _, labels, _ = _random_inputs(2)
  fn = LOSS_FNS[name]
  wrong = (labels + 1) % C
  empty = jnp.zeros_like(labels)
  for target, predicted in ((labels, labels), (labels, wrong), (empty, empty)):
    logits = 50.0 * jax.nn.one_hot(predicted, C)
    grads = jax.grad(lambda z, t=target: jnp.sum(fn(z, t)))(logits)
    assert bool(jnp.all(jnp.isfinite(grads)))
    assert bool(jnp.all(jnp.isfinite(fn(logits, target))))


def test_focal_gamma_zero_is_cross_entropy():
  logits, labels, mask = _random_inputs(3)
  np.testing.assert_allclose(
    segmentation.focal(logits, labels, mask, gamma=0.0),
    segmentation.cross_entropy(logits, labels, mask),
    rtol=1e-6,
  )


def test_focal_against_numpy_and_below_cross_entropy():
  logits, labels, _ = _random_inputs(2)
  z = np.asarray(logits, np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  pt = np.take_along_axis(p, np.asarray(labels)[..., None], -1)[..., 0]
  alpha = np.array([0.75, 0.25, 0.25, 0.25])[np.asarray(labels)]
  expected = np.mean(-alpha * (1 - pt) ** 2 * np.log(pt), axis=(1, 2))
  got = segmentation.focal(logits, labels, gamma=2.0, alpha=0.25)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  ce = segmentation.cross_entropy(logits, labels)
  assert bool(jnp.all(segmentation.focal(logits, labels) < ce))


@pytest.mark.parametrize("smooth", [1e-5, 0.5])
def test_tversky_half_half_is_soft_dice(smooth):
  logits, labels, mask = _random_inputs(2)
  for include_background in (False, True):
    np.testing.assert_allclose(
      segmentation.tversky(
        logits,
        labels,
        mask,
        alpha=0.5,
        beta=0.5,
        smooth=smooth,
        include_background=include_background,
      ),
      segmentation.soft_dice(
        logits,
        labels,
        mask,
        smooth=2 * smooth,
        include_background=include_background,
      ),
      rtol=1e-5,
    )


def test_tversky_weighs_false_negatives_by_beta():
  # Binary: the prediction misses half the foreground (2 FN, no FP).
  labels = jnp.array([[[1, 1, 1, 1, 0, 0, 0, 0]]])
  predicted = jnp.array([[[1, 1, 0, 0, 0, 0, 0, 0]]])
  logits = 50.0 * jax.nn.one_hot(predicted, 2)
  # TI = 2 / (2 + beta * 2): beta 0.7 -> 1 - 1 / 1.7; beta 0.3 -> 1 - 1 / 1.3.
  np.testing.assert_allclose(
    segmentation.tversky(logits, labels, smooth=1e-9),
    [1 - 1 / 1.7],
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    segmentation.tversky(logits, labels, alpha=0.7, beta=0.3, smooth=1e-9),
    [1 - 1 / 1.3],
    rtol=1e-5,
  )


def test_focal_tversky_is_power_of_tversky():
  logits, labels, mask = _random_inputs(2)
  # gamma = 1: Tversky itself; one foreground class: the power of it.
  np.testing.assert_allclose(
    segmentation.focal_tversky(logits, labels, mask, gamma=1.0),
    segmentation.tversky(logits, labels, mask),
    rtol=1e-6,
  )
  binary = labels % 2
  z = logits[..., :2]
  np.testing.assert_allclose(
    segmentation.focal_tversky(z, binary, mask, gamma=4 / 3),
    segmentation.tversky(z, binary, mask) ** 0.75,
    rtol=1e-5,
  )


def _generalized_dice_numpy(logits, labels, include_background, smooth):
  z = np.asarray(logits, np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  t = np.eye(z.shape[-1])[np.asarray(labels)]
  out = []
  for b in range(z.shape[0]):
    pb = p[b].reshape(-1, z.shape[-1])
    tb = t[b].reshape(-1, z.shape[-1])
    if not include_background:
      pb, tb = pb[:, 1:], tb[:, 1:]
    volume = tb.sum(0)
    w = np.zeros(volume.shape)
    w[volume > 0] = 1.0 / volume[volume > 0] ** 2
    if (volume > 0).any():
      w[volume == 0] = w[volume > 0].max()
    else:
      w[:] = 1.0
    w /= w.sum()
    num = 2 * np.sum(w * (pb * tb).sum(0)) + smooth
    den = np.sum(w * (pb.sum(0) + tb.sum(0))) + smooth
    out.append(1 - num / den)
  return np.array(out)


@pytest.mark.parametrize("include_background", [True, False])
def test_generalized_dice_against_numpy(include_background):
  logits, labels, _ = _random_inputs(2)
  # Unbalanced, with an absent class in example 0 and only background in
  # example 1.
  labels = labels.at[0].set(jnp.where(labels[0] == 2, 0, labels[0]))
  labels = labels.at[1].set(0)
  for smooth in (1e-5, 1.0):
    np.testing.assert_allclose(
      segmentation.generalized_dice(
        logits, labels, include_background=include_background, smooth=smooth
      ),
      _generalized_dice_numpy(logits, labels, include_background, smooth),
      rtol=1e-5,
    )


def test_generalized_dice_penalises_predicting_an_absent_class():
  labels = jnp.zeros((1, 8, 8), jnp.int32).at[:, :2, :2].set(1)
  good = 50.0 * jax.nn.one_hot(labels, 3)
  # Also predicts absent class 2 on a stretch of background.
  bad = 50.0 * jax.nn.one_hot(labels.at[:, 6:, :].set(2), 3)
  assert float(segmentation.generalized_dice(bad, labels)[0]) > 0.05
  np.testing.assert_allclose(
    segmentation.generalized_dice(good, labels), 0.0, atol=1e-6
  )


def test_new_losses_reject_bad_options():
  logits, labels, _ = _random_inputs(2)
  cases = [
    (segmentation.focal, dict(gamma=-1.0), "gamma"),
    (segmentation.focal, dict(alpha=1.5), "alpha"),
    (segmentation.focal, dict(alpha=(1.0, 2.0)), "4 non-negative"),
    (segmentation.tversky, dict(alpha=-0.1), "alpha"),
    (segmentation.tversky, dict(smooth=0.0), "smooth"),
    (segmentation.focal_tversky, dict(gamma=0.0), "gamma"),
  ]
  for fn, kwargs, message in cases:
    with pytest.raises(ValueError, match=message):
      fn(logits, labels, **kwargs)
