"""Tests for the pretext tasks (medseg_jax/pretext).

Each task in 2-D and 3-D: deterministic for a key, shape and dtype kept,
the batch's target is the clean input; then each corruption against an
independent numpy check of what it must and must not change.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax import pretext
from medseg_jax.pretext import genesis
from medseg_jax.pretext import masking

SHAPES = {"2d": (2, 32, 24, 1), "3d": (2, 16, 16, 8, 2)}
# Options that fit the tiny shapes (several masked patches).
OPTIONS = {"simmim": dict(patch=8)}


def _images(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("dims", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(pretext.PRETEXTS))
def test_task_is_deterministic_keeps_shape_and_targets_the_clean_input(
  name, dims
):
  images = _images(SHAPES[dims])
  task = jax.jit(pretext.get_pretext(name, **OPTIONS.get(name, {})))
  key = jax.random.key(3)
  a, b = task(key, images), task(key, images)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["weight"], b["weight"])
  assert a["image"].shape == images.shape
  assert a["image"].dtype == images.dtype
  assert a["weight"].shape == images.shape[:-1]
  # The restoration target is the clean input itself.
  np.testing.assert_array_equal(a["target"], images)
  # Each example got its own key: the two corruptions differ.
  assert not np.array_equal(
    a["image"][0] - images[0], a["image"][1] - images[1]
  )
  # Another key, another corruption (the task does change the image).
  c = task(jax.random.key(4), images)
  assert not np.array_equal(a["image"], c["image"])


@pytest.mark.parametrize("dims", sorted(SHAPES))
def test_intensity_curve_is_monotone_within_the_range(dims):
  image = _images(SHAPES[dims])[0]
  curve = jax.jit(genesis.intensity_curve)
  for seed in range(6):
    out = np.asarray(curve(jax.random.key(seed), image))
    order = np.argsort(np.asarray(image).ravel(), kind="stable")
    mapped = out.ravel()[order]
    steps = np.diff(mapped)
    # Increasing or decreasing (an inversion), never both.
    assert (steps >= -1e-5).all() or (steps <= 1e-5).all(), seed
    assert out.min() >= float(image.min()) - 1e-5
    assert out.max() <= float(image.max()) + 1e-5


def _blocks(array, block):
  """numpy: [n_blocks, block**nd * C] sorted values of each block."""
  *shape, channels = array.shape
  counts = [s // block for s in shape]
  core = array[tuple(slice(0, n * block) for n in counts)]
  out = []
  for index in np.ndindex(*counts):
    window = tuple(slice(i * block, (i + 1) * block) for i in index)
    out.append(np.sort(core[window].reshape(-1, channels), axis=0))
  return np.stack(out)


@pytest.mark.parametrize("dims", sorted(SHAPES))
def test_local_shuffle_permutes_within_blocks_only(dims):
  image = np.asarray(_images(SHAPES[dims])[0])
  block = 4
  out = np.asarray(
    genesis.local_shuffle(jax.random.key(0), image, block=block, share=0.5)
  )
  np.testing.assert_array_equal(_blocks(out, block), _blocks(image, block))
  changed = (out != image).any(axis=-1)
  assert 0.2 < changed.mean() < 0.8  # About half the blocks.
  same = genesis.local_shuffle(jax.random.key(0), image, block=block, share=0)
  np.testing.assert_array_equal(same, image)


def _box_of(changed):
  """The bounding box of ``changed`` as slices."""
  where = np.nonzero(changed)
  return tuple(slice(w.min(), w.max() + 1) for w in where)


@pytest.mark.parametrize("dims", sorted(SHAPES))
def test_in_painting_changes_boxes_and_nothing_else(dims):
  image = np.asarray(_images(SHAPES[dims])[0])
  out = np.asarray(
    genesis.in_painting(jax.random.key(1), image, num_boxes=1, size=(0.25, 0.5))
  )
  changed = (out != image).any(axis=-1)
  assert changed.any()
  box = _box_of(changed)
  # One box: everything changed lies in it and it is (almost) all changed.
  assert changed[box].mean() > 0.95
  for edge, size in zip(
    [s.stop - s.start for s in box], image.shape[:-1], strict=True
  ):
    assert 0.25 * size - 1 <= edge <= 0.5 * size + 1
  assert out.min() >= image.min() and out.max() <= image.max()


@pytest.mark.parametrize("dims", sorted(SHAPES))
def test_out_painting_keeps_only_boxes(dims):
  image = np.asarray(_images(SHAPES[dims])[0])
  out = np.asarray(
    genesis.out_painting(jax.random.key(2), image, num_boxes=1, size=(0.5, 0.5))
  )
  kept = (out == image).all(axis=-1)
  box = _box_of(kept)
  assert kept[box].all()  # The kept box, intact.
  assert kept.mean() < 0.5 ** len(box) + 0.05  # Noise everywhere else.


@pytest.mark.parametrize("dims", sorted(SHAPES))
def test_simmim_hides_exactly_the_ratio_of_whole_patches(dims):
  image = np.asarray(_images(SHAPES[dims])[0])
  patch, ratio = 8, 0.5
  masked, weight = masking.simmim(
    jax.random.key(0), image, patch=patch, ratio=ratio
  )
  masked, weight = np.asarray(masked), np.asarray(weight)
  shape = image.shape[:-1]
  grid = [-(-s // patch) for s in shape]
  per_patch = []
  for index in np.ndindex(*grid):
    window = tuple(slice(i * patch, (i + 1) * patch) for i in index)
    values = np.unique(weight[window])
    assert values.size == 1  # A patch is hidden whole, or not at all.
    per_patch.append(values[0])
  assert sum(per_patch) == round(ratio * math.prod(grid))
  hidden = weight.astype(bool)
  assert (masked[hidden] == 0).all()
  np.testing.assert_array_equal(masked[~hidden], image[~hidden])


def test_reconstruction_loss_matches_numpy():
  rng = np.random.default_rng(0)
  prediction = rng.normal(size=(3, 5, 4, 2)).astype(np.float32)
  target = rng.normal(size=(3, 5, 4, 2)).astype(np.float32)
  weight = (rng.random((3, 5, 4)) > 0.5).astype(np.float32)
  weight[2] = 0  # No weight: 0, not NaN.
  for kind, distance in (("mse", np.square), ("l1", np.abs)):
    error = distance(prediction - target).mean(axis=-1)
    expected = [
      (error[i] * weight[i]).sum() / weight[i].sum() if weight[i].sum() else 0
      for i in range(3)
    ]
    got = pretext.reconstruction_loss(prediction, target, weight, kind)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_unknown_task_or_option_lists_the_valid_ones():
  with pytest.raises(ValueError, match="models_genesis"):
    pretext.get_pretext("rotation")
  with pytest.raises(ValueError, match="ratio"):
    pretext.get_pretext("simmim", mask_ratio=0.5)
  with pytest.raises(ValueError, match="mse"):
    pretext.reconstruction_loss(
      jnp.zeros((1, 2, 1)), jnp.zeros((1, 2, 1)), jnp.ones((1, 2)), "ssim"
    )
