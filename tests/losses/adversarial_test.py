"""Tests for medseg_jax.losses.adversarial against numpy closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax.losses import adversarial


def _logits(seed, shape=(3, 4, 5, 1)):
  return np.random.default_rng(seed).normal(0.0, 2.0, shape).astype(np.float32)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _numpy_critic(real, fake, kind):
  if kind == "least_squares":
    patch = 0.5 * ((real - 1.0) ** 2 + fake**2)
  elif kind == "hinge":
    patch = np.maximum(0.0, 1.0 - real) + np.maximum(0.0, 1.0 + fake)
  else:
    patch = -np.log(_sigmoid(real)) - np.log(1.0 - _sigmoid(fake))
  return patch.reshape(len(patch), -1).mean(axis=1)


def _numpy_segmentor(fake, kind):
  if kind == "least_squares":
    patch = 0.5 * (fake - 1.0) ** 2
  elif kind == "hinge":
    patch = -fake
  else:
    patch = -np.log(_sigmoid(fake))
  return patch.reshape(len(patch), -1).mean(axis=1)


@pytest.mark.parametrize("kind", adversarial.GAN_LOSSES)
def test_gan_losses_match_their_formulas(kind):
  real, fake = _logits(0), _logits(1)
  np.testing.assert_allclose(
    adversarial.critic_loss(real, fake, kind),
    _numpy_critic(real, fake, kind),
    rtol=1e-5,
    atol=1e-6,
  )
  np.testing.assert_allclose(
    adversarial.segmentor_loss(fake, kind),
    _numpy_segmentor(fake, kind),
    rtol=1e-5,
    atol=1e-6,
  )


@pytest.mark.parametrize("kind", adversarial.GAN_LOSSES)
def test_critic_prefers_telling_real_from_fake(kind):
  # A critic that scores real high and fake low has a lower loss than one
  # that swaps them, and the segmentor's term is then higher.
  good, bad = 3.0 * np.ones((2, 3, 3, 1)), -3.0 * np.ones((2, 3, 3, 1))
  right = adversarial.critic_loss(good, bad, kind)
  wrong = adversarial.critic_loss(bad, good, kind)
  assert np.all(right < wrong)
  assert np.all(
    adversarial.segmentor_loss(bad, kind)
    > adversarial.segmentor_loss(good, kind)
  )


@pytest.mark.parametrize("kind", adversarial.GAN_LOSSES)
def test_gradients_are_finite_and_jit_matches_eager(kind):
  real, fake = jnp.asarray(_logits(2)), jnp.asarray(_logits(3))
  loss = lambda f: jnp.sum(adversarial.segmentor_loss(f, kind))  # noqa: E731
  grads = jax.grad(loss)(fake)
  assert np.all(np.isfinite(grads)) and np.any(grads != 0)
  np.testing.assert_allclose(
    jax.jit(adversarial.critic_loss, static_argnums=2)(real, fake, kind),
    adversarial.critic_loss(real, fake, kind),
    rtol=1e-6,
  )


def test_multiscale_l1_is_the_mean_over_levels_of_mean_abs_differences():
  rng = np.random.default_rng(0)
  shapes = [(2, 8, 8, 3), (2, 4, 4, 5), (2, 2, 2, 7)]
  real = [rng.normal(size=s).astype(np.float32) for s in shapes]
  fake = [rng.normal(size=s).astype(np.float32) for s in shapes]
  expected = np.mean(
    [
      np.abs(r - f).reshape(2, -1).mean(axis=1)
      for r, f in zip(real, fake, strict=True)
    ],
    axis=0,
  )
  got = adversarial.multiscale_l1(
    [jnp.asarray(x) for x in real], [jnp.asarray(x) for x in fake]
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(adversarial.multiscale_l1(real, real), 0.0)


def test_bad_inputs_are_explained():
  with pytest.raises(ValueError, match="least_squares"):
    adversarial.critic_loss(np.zeros((1, 2, 1)), np.zeros((1, 2, 1)), "wgan")
  with pytest.raises(ValueError, match="Shapes differ"):
    adversarial.critic_loss(np.zeros((1, 2, 1)), np.zeros((1, 3, 1)), "hinge")
  with pytest.raises(ValueError, match="equal depth"):
    adversarial.multiscale_l1([np.zeros((1, 2))], [])
