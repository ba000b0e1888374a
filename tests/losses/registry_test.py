"""Tests for medseg_jax.losses.from_config and WeightedSum (config.loss)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from medseg_jax import losses
from medseg_jax.data import distance as distance_lib


def _inputs():
  k1, k2 = jax.random.split(jax.random.key(0))
  logits = jax.random.normal(k1, (2, 8, 8, 3))
  labels = jax.random.randint(k2, (2, 8, 8), 0, 3)
  mask = jnp.ones((2, 8, 8)).at[:, :, 6:].set(0)
  dist = jnp.stack(
    [distance_lib.signed_distance(np.asarray(y), 3) for y in labels]
  )
  return logits, labels, mask, dist


@pytest.mark.slow
def test_name_config_still_works_and_equals_the_function():
  logits, labels, mask, _ = _inputs()
  config = common.base_config()
  config.loss.dice_weight = 0.3
  loss = losses.from_config(config.loss, num_classes=3, spatial_dims=2)
  assert loss.inputs == ()
  np.testing.assert_allclose(
    loss(logits, labels, mask),
    losses.ce_dice(logits, labels, mask, dice_weight=0.3),
    rtol=1e-6,
  )


def test_terms_are_a_weighted_sum():
  logits, labels, mask, dist = _inputs()
  config = common.base_config()
  common.loss_terms(
    config,
    dict(name="cross_entropy", weight=1.0),
    dict(name="cldice", weight=0.5, iterations=2),
    dict(name="boundary", weight=0.01),
    dict(name="focal", gamma=1.0),  # weight defaults to 1.
  )
  loss = losses.from_config(config.loss, num_classes=3, spatial_dims=2)
  assert loss.inputs == ("distance",)
  expected = (
    losses.cross_entropy(logits, labels, mask)
    + 0.5 * losses.cldice(logits, labels, mask, iterations=2)
    + 0.01 * losses.boundary(logits, labels, mask, distance=dist)
    + losses.focal(logits, labels, mask, gamma=1.0)
  )
  np.testing.assert_allclose(
    loss(logits, labels, mask, distance=dist), expected, rtol=1e-6
  )
  np.testing.assert_allclose(
    jax.jit(loss)(logits, labels, mask, distance=dist), expected, rtol=1e-5
  )
  with pytest.raises(ValueError, match="needs \\['distance'\\]"):
    loss(logits, labels, mask)


def test_saved_config_round_trip(tmp_path):
  # config.json keeps the terms (a list of dicts) readable.
  from medseg_jax import run_config  # noqa: PLC0415

  config = common.base_config()
  common.loss_terms(config, dict(name="tversky", weight=2.0, alpha=0.4))
  run_config.save(config, tmp_path)
  loaded = run_config.load(tmp_path)
  logits, labels, mask, _ = _inputs()
  np.testing.assert_allclose(
    losses.from_config(loaded.loss)(logits, labels, mask),
    2.0 * losses.tversky(logits, labels, mask, alpha=0.4),
    rtol=1e-6,
  )


@pytest.mark.parametrize(
  "loss_config, message",
  [
    (dict(name="lovasz"), "valid names: \\['boundary', 'ce_dice'"),
    (dict(terms=[dict(name="dice"), dict(name="nope")]), "terms\\[1\\]"),
    (dict(name="focal", gamma=-1.0), "gamma must be >= 0"),
    (dict(name="focal", alpha=(0.5, 0.5)), "3 non-negative"),
    (dict(name="dice", dice_weight=1.0), "options are"),
    (dict(terms=[dict(name="dice", weight="a")]), "weight"),
    (dict(terms=[dict(name="dice", weight=float("nan"))]), "weight"),
    (dict(terms=[dict(name="dice")], dice_weight=1.0), "inside each term"),
    (dict(name="dice", weight=2.0), "only meaningful inside"),
    (dict(terms=[dict(name="cldice", iterations=1.5)]), "iterations"),
    (dict(terms=[dict(name="tversky", smooth=0.0)]), "smooth"),
    (dict(terms=dict(name="dice")), "list of dicts"),
  ],
)
def test_bad_configs_fail_when_read(loss_config, message):
  with pytest.raises(ValueError, match=message):
    losses.from_config(
      ml_collections.ConfigDict(loss_config), num_classes=3, spatial_dims=3
    )


def test_terms_set_directly_on_the_base_config_win_over_its_name():
  logits, labels, mask, _ = _inputs()
  config = common.base_config()  # loss.name = "ce_dice" by default.
  config.loss.terms = [
    dict(name="cross_entropy", weight=1.0),
    dict(name="tversky", weight=0.5, alpha=0.5, beta=0.5),
  ]
  loss = losses.from_config(config.loss, num_classes=3, spatial_dims=2)
  expected = losses.cross_entropy(logits, labels, mask) + 0.5 * (
    losses.tversky(logits, labels, mask, alpha=0.5, beta=0.5)
  )
  np.testing.assert_allclose(loss(logits, labels, mask), expected, rtol=1e-6)


def test_loss_terms_needs_a_term():
  with pytest.raises(ValueError, match="at least one"):
    common.loss_terms(common.base_config())
