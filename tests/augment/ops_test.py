"""Tests for the augmentation ops (medseg_jax.augment.spatial/intensity).

Every op runs on a small batch (jit + vmap, one compile per op and rank) of
a synthetic example whose image is the one-hot encoding of its label, so
alignment of image and label can be read back with an argmax.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from medseg_jax import augment
from medseg_jax.augment import intensity
from medseg_jax.augment import sampling
from medseg_jax.augment import spatial

SHAPES = {2: (16, 16), 3: (12, 12, 12)}
BLOCKS = {2: 8, 3: 6}  # label blocks, large enough to have interiors
VALUES = np.array([0, 1, 3, 7])  # label values; channel i <-> VALUES[i]
PAD = 2  # trailing rows along axis 0 that are padding (mask 0, label 0)
BATCH = 4

# Strong-enough options so each op visibly changes the example.
OPTIONS = {
  "flip": {},
  "rot90": {},
  "affine": dict(
    rotation=(-30, 30),
    scale=(0.8, 1.2),
    shear=(-0.1, 0.1),
    translation=(-0.1, 0.1),
  ),
  "elastic": dict(magnitude=(1, 2), grid=4),
  "gamma": {},
  "brightness": dict(factor=(0.8, 1.2), delta=(-0.1, 0.1)),
  "contrast": dict(factor=(0.5, 0.8)),
  "noise": dict(sigma=(0.05, 0.1)),
  "blur": {},
  "low_resolution": dict(factor=(1.5, 2.5)),
  "corruption": dict(names=("gaussian_noise", "spike"), severity=(1.0, 3.0)),
}
GEOMETRIC = [n for n, s in augment.AUGMENTATIONS.items() if s.geometric]
INTENSITY = [n for n, s in augment.AUGMENTATIONS.items() if not s.geometric]


def _example(dims: int) -> dict[str, np.ndarray]:
  """Blocky labels in {1, 3, 7}; padding (label 0, mask 0) at the end."""
  shape = SHAPES[dims]
  grid = np.indices(shape) // BLOCKS[dims]
  index = 1 + np.sum(grid, axis=0) % 3  # 1..3, constant on blocks
  index[-PAD:] = 0
  label = VALUES[index].astype(np.int32)
  # One-hot plus a ramp shared by all channels (argmax is still the label;
  # gives the intensity ops something to change).
  ramp = 0.3 * np.sum(np.indices(shape), axis=0) / np.sum(shape)
  image = np.eye(len(VALUES), dtype=np.float32)[index] + ramp[..., None]
  image = image.astype(np.float32)
  mask = (index > 0).astype(np.float32)
  return {"image": image, "label": label, "mask": mask}


def _batch(dims: int) -> dict[str, jax.Array]:
  ex = _example(dims)
  return {k: jnp.stack([jnp.asarray(v)] * BATCH) for k, v in ex.items()}


@functools.cache
def _run(op: str, dims: int, seed: int = 0) -> dict[str, np.ndarray]:
  """One jitted batch call of `op` with p=1 (cached per op, rank, seed)."""
  pipeline = augment.build([dict(op=op, p=1.0, **OPTIONS[op])])
  out = jax.jit(pipeline)(jax.random.key(seed), _batch(dims))
  return jax.tree.map(np.asarray, out)


def _interior(label: np.ndarray) -> np.ndarray:
  """True where the 3^d neighbourhood of a voxel has a single label."""
  padded = np.pad(label, 1, mode="edge")
  same = np.ones(label.shape, bool)
  for shift in np.ndindex(*(3,) * label.ndim):
    window = tuple(
      slice(s, s + n) for s, n in zip(shift, label.shape, strict=True)
    )
    same &= padded[window] == label
  return same


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("op", list(augment.AUGMENTATIONS))
def test_shapes_dtypes_and_label_values(op, dims):
  out = _run(op, dims)
  batch = _batch(dims)
  for k in ("image", "label", "mask"):
    assert out[k].shape == batch[k].shape, k
    assert out[k].dtype == batch[k].dtype, k
  assert set(np.unique(out["label"])) <= set(VALUES)
  assert set(np.unique(out["mask"])) <= {0.0, 1.0}
  assert np.all(np.isfinite(out["image"]))
  # The example has label 0 exactly on padding; ops keep that invariant,
  # geometric ones by sending out-of-bounds voxels to label 0 and mask 0.
  np.testing.assert_array_equal(out["label"] == 0, out["mask"] == 0)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("op", list(augment.AUGMENTATIONS))
def test_op_changes_the_example_and_draws_differ(op, dims):
  out = _run(op, dims)
  batch = jax.tree.map(np.asarray, _batch(dims))
  changed = [
    not np.array_equal(out["image"][b], batch["image"][b]) for b in range(BATCH)
  ]
  assert any(changed)
  # Per-example keys: the examples of the batch got different draws.
  assert any(
    not np.array_equal(out["image"][0], out["image"][b])
    for b in range(1, BATCH)
  )


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("op", GEOMETRIC)
def test_geometric_ops_keep_image_and_label_aligned(op, dims):
  out = _run(op, dims)
  for b in range(BATCH):
    label = out["label"][b]
    from_image = VALUES[np.argmax(out["image"][b], axis=-1)]
    if op in ("flip", "rot90"):
      check = np.ones(label.shape, bool)  # exact permutations
    else:
      check = (out["mask"][b] > 0) & _interior(label)
      assert check.sum() > 0.04 * label.size  # something is checked
    np.testing.assert_array_equal(from_image[check], label[check])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("op", INTENSITY)
def test_intensity_ops_touch_only_real_voxels(op, dims):
  out = _run(op, dims)
  batch = jax.tree.map(np.asarray, _batch(dims))
  np.testing.assert_array_equal(out["label"], batch["label"])
  np.testing.assert_array_equal(out["mask"], batch["mask"])
  padding = batch["mask"] == 0
  np.testing.assert_array_equal(out["image"][padding], batch["image"][padding])


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_degenerate_options_are_the_identity(dims):
  ex = jax.tree.map(jnp.asarray, _example(dims))
  key = jax.random.key(3)
  exact = [
    functools.partial(
      spatial.affine,
      rotation=(0, 0),
      scale=(1, 1),
      shear=(0, 0),
      translation=(0, 0),
    ),
    functools.partial(spatial.elastic, magnitude=(0, 0), grid=3),
    functools.partial(spatial.flip, axis_p=0.0),
    functools.partial(intensity.noise, sigma=(0, 0)),
    functools.partial(intensity.blur, sigma=(0, 0)),
    functools.partial(intensity.low_resolution, factor=(1, 1)),
  ]
  close = [
    functools.partial(intensity.gamma, gamma=(1, 1)),
    functools.partial(intensity.brightness, factor=(1, 1), delta=(0, 0)),
    functools.partial(intensity.contrast, factor=(1, 1)),
  ]

  @jax.jit
  def run_all(key, ex):
    return [fn(key, ex) for fn in exact], [fn(key, ex) for fn in close]

  exact_out, close_out = run_all(key, ex)
  for fn, out in zip(exact, exact_out, strict=True):
    for k in ex:
      np.testing.assert_array_equal(out[k], ex[k], err_msg=f"{fn} {k}")
  for fn, out in zip(close, close_out, strict=True):
    np.testing.assert_allclose(
      out["image"], ex["image"], atol=1e-6, err_msg=str(fn)
    )
    np.testing.assert_array_equal(out["label"], ex["label"])


@pytest.mark.slow
def test_affine_out_of_bounds_is_zero_everywhere():
  ex = jax.tree.map(jnp.asarray, _example(2))
  ex["mask"] = jnp.ones_like(ex["mask"])
  # Content moves by +8 voxels on axis 0: rows 0..7 come from outside.
  out = spatial.affine(
    jax.random.key(0),
    ex,
    rotation=(0, 0),
    scale=(1, 1),
    translation=((0.5, 0.5), (0, 0)),
  )
  outside = np.zeros((16, 16), bool)
  outside[:8] = True
  np.testing.assert_array_equal(np.asarray(out["mask"]) == 0, outside)
  assert np.all(np.asarray(out["label"])[outside] == 0)
  assert np.all(np.asarray(out["image"])[outside] == 0)
  np.testing.assert_array_equal(out["label"][8:], ex["label"][:8])
  np.testing.assert_array_equal(out["image"][8:], ex["image"][:8])


@pytest.mark.slow
def test_affine_quarter_turn_matches_rot90_landmarks():
  ex = jax.tree.map(jnp.asarray, _example(2))
  ex["label"] = ex["label"].at[2, 5].set(9)  # an asymmetric landmark
  out = spatial.affine(jax.random.key(0), ex, rotation=(90, 90), scale=(1, 1))
  candidates = [np.rot90(np.asarray(ex["label"]), k) for k in (1, 3)]
  assert any(np.array_equal(out["label"], c) for c in candidates)


@pytest.mark.slow
def test_affine_scale_above_one_zooms_in():
  label = np.zeros((16, 16), np.int32)
  label[6:10, 6:10] = 1  # centred 4x4 square (array centre 7.5)
  ex = {
    "image": jnp.asarray(label[..., None], jnp.float32),
    "label": jnp.asarray(label),
    "mask": jnp.ones((16, 16), jnp.float32),
  }
  out = spatial.affine(jax.random.key(0), ex, rotation=(0, 0), scale=(2, 2))
  assert int(np.sum(out["label"])) == 64  # 8x8


def test_rot90_plane_rules():
  ex = jax.tree.map(jnp.asarray, _example(2))
  with pytest.raises(ValueError, match="square"):
    spatial.rot90(jax.random.key(0), _crop(ex, 12), planes=((0, 1),))
  # Without planes, a non-square example has no eligible plane: identity.
  cropped = _crop(ex, 12)
  out = spatial.rot90(jax.random.key(0), cropped)
  for k in cropped:
    np.testing.assert_array_equal(out[k], cropped[k])


def _crop(ex, rows):
  return {k: v[:rows] for k, v in ex.items()}


def test_rot90_in_plane_only_for_anisotropic_volume():
  label = np.arange(4 * 8 * 8, dtype=np.int32).reshape(4, 8, 8)
  ex = {
    "image": jnp.asarray(label[..., None], jnp.float32),
    "label": jnp.asarray(label),
    "mask": jnp.ones(label.shape, jnp.float32),
  }
  out = spatial.rot90(jax.random.key(1), ex)  # only plane (1, 2) is square
  candidates = [np.rot90(label, k, axes=(1, 2)) for k in (1, 2, 3)]
  assert any(np.array_equal(out["label"], c) for c in candidates)


def test_flip_axes_subset():
  ex = jax.tree.map(jnp.asarray, _example(3))
  out = spatial.flip(jax.random.key(0), ex, axes=(2,), axis_p=1.0)
  np.testing.assert_array_equal(out["label"], jnp.flip(ex["label"], 2))
  np.testing.assert_array_equal(out["image"], jnp.flip(ex["image"], 2))


def test_cubic_upsample_matrix_interpolates_nodes():
  m = sampling.cubic_upsample_matrix(13, 5)  # nodes at 0, 3, 6, 9, 12
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
  np.testing.assert_allclose(m[::3], np.eye(5), atol=1e-6)
  ramp = np.arange(5.0)
  np.testing.assert_allclose(m[1:-1] @ ramp, np.arange(1, 12) / 3, atol=1e-5)


@pytest.mark.slow
def test_elastic_magnitude_controls_displacement():
  # A horizontal ramp image: displacement along axis 1 shows in the values.
  ramp = np.tile(np.arange(32, dtype=np.float32), (32, 1))
  ex = {
    "image": jnp.asarray(ramp[..., None]),
    "label": jnp.zeros((32, 32), jnp.int32),
    "mask": jnp.ones((32, 32), jnp.float32),
  }
  inner = (slice(8, 24), slice(8, 24))

  def mean_shift(magnitude):
    out = spatial.elastic(
      jax.random.key(0), ex, magnitude=(magnitude, magnitude), grid=5
    )
    return float(np.mean(np.abs(out["image"][..., 0] - ramp)[inner]))

  small, large = mean_shift(1.0), mean_shift(4.0)
  assert 0.2 < small < large
  np.testing.assert_allclose(large / small, 4.0, rtol=0.3)


def test_blur_keeps_constants_and_ignores_padding():
  shape = (12, 12)
  mask = np.ones(shape, np.float32)
  mask[:, -3:] = 0
  image = np.where(mask[..., None] > 0, 5.0, -100.0).astype(np.float32)
  ex = {
    "image": jnp.asarray(image),
    "label": jnp.zeros(shape, jnp.int32),
    "mask": jnp.asarray(mask),
  }
  out = intensity.blur(jax.random.key(0), ex, sigma=(2, 2))
  np.testing.assert_allclose(out["image"], image, rtol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_blur_is_the_masked_gaussian_filter(dims):
  # blur(x * m) / blur(m) with zero padding beyond the border, the kernel
  # truncated at ceil(truncate * sigma) voxels: scipy's Gaussian filter with
  # mode="constant" and that radius is the reference.
  shape = (16, 16) if dims == 2 else (10, 12, 12)
  ex, image, real = _padded_example(shape, 2, seed=4)
  sigma, truncate = 1.5, 2.0
  out = intensity.blur(
    jax.random.key(0), ex, sigma=(sigma, sigma), truncate=truncate
  )
  radius = int(np.ceil(truncate * sigma))  # 3

  def smooth(x):
    return ndimage.gaussian_filter(
      x, sigma, mode="constant", cval=0.0, radius=radius
    )

  weight = smooth(real.astype(np.float64))
  expected = np.stack(
    [smooth(image[..., c] * real) / weight for c in range(2)], axis=-1
  )
  expected = np.where(real[..., None], expected, image)
  np.testing.assert_allclose(out["image"], expected, rtol=1e-5, atol=1e-5)


def test_low_resolution_smooths_noise():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(16, 16, 2)).astype(np.float32)
  ex = {
    "image": jnp.asarray(image),
    "label": jnp.zeros((16, 16), jnp.int32),
    "mask": jnp.ones((16, 16), jnp.float32),
  }
  key = jax.random.key(0)
  for order in ("nearest", "linear"):
    low = intensity.low_resolution(key, ex, factor=(3, 3), order=order)
    low = np.asarray(low["image"])
    assert low.std() < 0.8 * image.std()
    assert low.min() >= image.min() - 1e-6
    assert low.max() <= image.max() + 1e-6


def _padded_example(shape, channels, seed):
  """Random image whose trailing rows along axis 0 are padding (mask 0) at
  values far outside the real voxels' range."""
  rng = np.random.default_rng(seed)
  image = rng.uniform(-2, 3, size=(*shape, channels)).astype(np.float32)
  mask = np.ones(shape, np.float32)
  mask[-PAD:] = 0
  image[-PAD:] = -50.0
  ex = {
    "image": jnp.asarray(image),
    "label": jnp.zeros(shape, jnp.int32),
    "mask": jnp.asarray(mask),
  }
  return ex, image, mask > 0


def _gamma_reference(image, real, exponent, invert):
  """``u ** gamma`` (or ``1 - (1 - u) ** gamma``) on the image rescaled to
  [0, 1] per channel over the real voxels, mapped back; padding kept."""
  image = image.astype(np.float64)
  low = image[real].min(axis=0)
  high = image[real].max(axis=0)
  u = np.clip((image - low) / (high - low), 0, 1)
  u = 1 - (1 - u) ** exponent if invert else u**exponent
  return np.where(real[..., None], u * (high - low) + low, image)


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_matches_the_closed_form(invert):
  ex, image, real = _padded_example((16, 16), 2, seed=1)
  out = intensity.gamma(jax.random.key(0), ex, gamma=(2, 2), invert=invert)
  np.testing.assert_allclose(
    out["image"], _gamma_reference(image, real, 2.0, invert), atol=1e-5
  )
  # The channel's range over real voxels is kept; padding is untouched.
  np.testing.assert_array_equal(np.asarray(out["image"])[~real], -50.0)


def test_gamma_per_channel_draws_one_exponent_per_channel():
  ex, image, real = _padded_example((16, 16), 3, seed=2)
  out = np.asarray(
    intensity.gamma(jax.random.key(3), ex, gamma=(0.5, 2.0), per_channel=True)[
      "image"
    ]
  )
  # Read each channel's exponent back from one mid-range voxel, then the
  # closed form with it must give the whole channel.
  low, high = image[real].min(axis=0), image[real].max(axis=0)
  u = (image[4, 5] - low) / (high - low)
  v = (out[4, 5] - low) / (high - low)
  exponents = np.log(v) / np.log(u)
  assert np.all((exponents >= 0.5 - 1e-4) & (exponents <= 2.0 + 1e-4))
  assert len(set(np.round(exponents, 3).tolist())) == 3  # Independent.
  for c, exponent in enumerate(exponents):
    np.testing.assert_allclose(
      out[..., c],
      _gamma_reference(image, real, exponent, False)[..., c],
      atol=1e-4,
    )
