"""Tests for medseg_jax.corruptions: identity, monotone severity, keys,
labels, masks, 2-D and 3-D, jit and vmap, and closed forms.

Each corruption is compiled once per rank: one jitted, vmapped call
returns its output at severities 0-5 for a few keys (`_sweep`).
"""

import functools

import jax
import numpy as np
import pytest
from scipy import ndimage

from medseg_jax import augment
from medseg_jax import corruptions
from medseg_jax.corruptions import robustness

SHAPES = {2: (40, 36), 3: (20, 24, 22)}
KEYS = 3
# Severities 0-5, then a tiny one (index 6).
LEVELS = np.array([0, 1, 2, 3, 4, 5, 0.01], np.float32)
NAMES = list(corruptions.NAMES)
# Corruptions whose output does not depend on the key.
KEYLESS = {"blur", "contrast_compression", "contrast_expansion"}


@functools.cache
def _image(dims: int) -> np.ndarray:
  """A smooth positive two-channel image with edges: blobs on a ramp."""
  shape = SHAPES[dims]
  rng = np.random.default_rng(dims)
  noise = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
  ramp = np.sum(np.indices(shape), axis=0) / np.sum(shape)
  blob = (noise > 0).astype(float)
  first = 100 + 80 * blob + 40 * ramp + 200 * noise
  second = 50 + 30 * ramp + 30 * (noise < -0.05)
  return np.stack([first, second], axis=-1).astype(np.float32)


@functools.cache
def _compiled(name: str, dims: int):
  """``(keys, levels, image) -> f32[K, L, *S, 2]``: the image under
  `name` for every key and (traced) severity; one jitted vmap per
  corruption and rank."""

  def one(key, level, image):
    return corruptions.corrupt(name, key, image, level)

  over_levels = jax.vmap(one, in_axes=(None, 0, None))
  return jax.jit(jax.vmap(over_levels, in_axes=(0, None, None)))


def _keys():
  return jax.random.split(jax.random.key(7), KEYS)


@functools.cache
def _sweep(name: str, dims: int) -> np.ndarray:
  """``f32[KEYS, 7, *S, 2]`` at ``LEVELS``."""
  return np.asarray(_compiled(name, dims)(_keys(), LEVELS, _image(dims)))


def _mse(a, b) -> float:
  return float(np.mean((np.asarray(a, np.float64) - b) ** 2))


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_the_identity(name, dims):
  image = _image(dims)
  out = _sweep(name, dims)
  # Traced severity 0 under jit and vmap: the input, bit for bit.
  for k in range(KEYS):
    np.testing.assert_array_equal(out[k, 0], image)
  # A Python 0 returns the input without computing anything.
  same = corruptions.corrupt(name, jax.random.key(0), image, 0)
  np.testing.assert_array_equal(np.asarray(same), image)
  # The table starts at the identity: a tiny severity changes almost
  # nothing (a table whose level 0 were not the identity would jump).
  # Down-sampling is discrete: any factor above 1 drops a sample.
  if name != "anisotropy":
    spread = float(image.max() - image.min())
    assert np.max(np.abs(out[:, 6] - image)) < 0.05 * spread
  else:
    assert corruptions.parameters(name, 0) == {"factor": 1.0}


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_distortion_grows_with_severity(name, dims):
  image = _image(dims)
  out = _sweep(name, dims)
  mse = np.array(
    [[_mse(out[k, s], image) for s in range(6)] for k in range(KEYS)]
  )
  # Motion saturates: past a few voxels of movement the poses are
  # decorrelated from the start and one key's error can dip a little; its
  # mean over keys must still grow.
  rows = mse.mean(axis=0, keepdims=True) if name == "motion" else mse
  for row in rows:
    # Non-decreasing (0.5 % slack for rounding, k-space and resampling).
    for low, high in zip(row[:-1], row[1:], strict=True):
      assert high >= low * 0.995, mse
  for row in mse:
    assert row[1] > 0, mse
    assert row[5] > 1.5 * row[1], mse


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_keys_decide_the_draws(name, dims):
  out = _sweep(name, dims)
  # Same keys, same output, bit for bit.
  again = np.asarray(_compiled(name, dims)(_keys(), LEVELS, _image(dims)))
  np.testing.assert_array_equal(again, out)
  if name not in KEYLESS:
    assert not np.array_equal(out[0, 5], out[1, 5])
  else:
    np.testing.assert_array_equal(out[0, 5], out[1, 5])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_raw_or_normalised_intensities_give_the_same_artefact(name, dims):
  """corrupt(a x + b) == a corrupt(x) + b for a > 0: corrupting the raw
  image equals corrupting an affinely normalised one (z-score, min-max)."""
  image = _image(dims)
  a, b = 0.013, -2.5
  scaled = _compiled(name, dims)(_keys(), LEVELS, a * image + b)
  spread = float(image.max() - image.min())
  np.testing.assert_allclose(
    np.asarray(scaled),
    a * _sweep(name, dims) + b,
    rtol=1e-3,
    atol=1e-4 * a * spread,
  )


def test_static_severity_unbatched_equals_the_traced_vmapped_sweep():
  """Static sizes do not depend on the severity, so a Python severity,
  outside vmap, reproduces the traced, vmapped sweep (motion: the most
  static structure of the ten)."""
  key = _keys()[1]
  static = jax.jit(functools.partial(corruptions.corrupt, "motion", severity=3))
  np.testing.assert_allclose(
    np.asarray(static(key, _image(2))),
    _sweep("motion", 2)[1, 3],
    rtol=1e-5,
    atol=1e-3,
  )


@pytest.mark.parametrize("dims", [2, 3])
def test_padding_keeps_its_values_and_labels_are_untouched(dims):
  image = _image(dims)
  shape = SHAPES[dims]
  mask = np.ones(shape, np.float32)
  mask[-4:] = 0  # padding at the end of axis 0
  label = (image[..., 0] > 150).astype(np.int32)
  example = {"image": image, "label": label, "mask": mask}
  fn = jax.jit(
    lambda key, ex: corruptions.corrupt_example("rician_noise", key, ex, 4)
  )
  out = fn(jax.random.key(1), example)
  np.testing.assert_array_equal(out["label"], label)
  np.testing.assert_array_equal(out["mask"], mask)
  np.testing.assert_array_equal(np.asarray(out["image"])[-4:], image[-4:])
  assert not np.array_equal(np.asarray(out["image"])[:-4], image[:-4])
  # Outside jit the label is the very same object.
  eager = corruptions.corrupt_example(
    "contrast_expansion", jax.random.key(1), example, 2
  )
  assert eager["label"] is label


def test_the_augmentation_op_changes_images_only():
  # Three of the ten keep the compile short; lax.switch picks per example.
  pipeline = augment.build(
    [
      dict(
        op="corruption",
        names=("gaussian_noise", "bias_field", "anisotropy"),
        severity=(1.0, 5.0),
      )
    ],
    spatial_shape=SHAPES[2],
  )
  image = np.stack([_image(2)] * 4)
  label = (image[..., 0] > 150).astype(np.int32)
  out = jax.jit(pipeline)(jax.random.key(3), {"image": image, "label": label})
  np.testing.assert_array_equal(out["label"], label)
  assert all(
    not np.array_equal(np.asarray(out["image"][b]), image[b]) for b in range(4)
  )
  # Per-example draws differ.
  assert not np.array_equal(np.asarray(out["image"][0]), out["image"][1])


def test_unknown_names_and_bad_severities_are_explained():
  with pytest.raises(ValueError, match="valid: gaussian_noise, rician_noise"):
    corruptions.corrupt("jpeg", jax.random.key(0), _image(2), 1)
  with pytest.raises(ValueError, match=r"\[0, 5\]"):
    corruptions.corrupt("blur", jax.random.key(0), _image(2), 6)
  with pytest.raises(ValueError, match="channels last"):
    corruptions.corrupt("blur", jax.random.key(0), _image(2)[..., 0], 1)
  assert corruptions.resolve("all") == corruptions.NAMES
  assert corruptions.resolve("motion, blur,motion") == ("motion", "blur")
  with pytest.raises(ValueError, match="valid:"):
    corruptions.resolve("motion,foo")
  with pytest.raises(ValueError, match="augmentation op 'corruption'"):
    augment.build([dict(op="corruption", names=("motion", "foo"))])


def test_parameters_follow_the_rood_mri_tables():
  # ROOD-MRI's levels are linspace(0, top, 6)[1:]; fractional severities
  # interpolate between neighbours.
  assert corruptions.parameters("rician_noise", 5) == {"sigma": 0.8}
  assert corruptions.parameters("blur", 2)["sigma"] == pytest.approx(1.6)
  assert corruptions.parameters("anisotropy", 1)["factor"] == pytest.approx(2.8)
  assert corruptions.parameters("motion", 2.5) == pytest.approx(
    {"degrees": 2.5, "translation": 5.0}
  )
  assert "| ghosting | intensity | 0.5 | 1 | 1.5 | 2 | 2.5 |" in (
    corruptions.describe()
  )


# ---------------------------------------------------------------------------
# Closed forms and independent references.


def test_gaussian_noise_std_is_relative_to_the_image_std():
  image = _image(2)
  out = _sweep("gaussian_noise", 2)
  for c in range(2):
    residual = out[:, 3, ..., c] - image[..., c]
    want = 0.48 * image[..., c].std()
    assert residual.std() == pytest.approx(want, rel=0.05)


def test_rician_noise_on_the_background_is_rayleigh():
  # Half the image at its minimum: there the output is |s (n1 + i n2)|, a
  # Rayleigh variable of mean s sqrt(pi / 2).
  image = np.zeros((64, 64, 1), np.float32)
  image[:, 32:] = 10.0
  out = corruptions.corrupt("rician_noise", jax.random.key(0), image, 5)
  background = np.asarray(out)[:, :32, 0]
  spread = 0.8 * image.std()
  assert background.mean() == pytest.approx(
    spread * np.sqrt(np.pi / 2), rel=0.05
  )
  assert background.min() >= 0


def test_blur_is_the_gaussian_filter():
  image = _image(2)[..., :1]
  out = np.asarray(corruptions.corrupt("blur", jax.random.key(0), image, 1))
  # Zero padding normalised by the blurred ones (no bleed from outside),
  # with scipy's radius set to our 12 voxels.
  sigma = 0.8
  truncate = 12 / sigma
  blur = functools.partial(
    ndimage.gaussian_filter, sigma=sigma, mode="constant", truncate=truncate
  )
  want = blur(image[..., 0].astype(np.float64)) / blur(np.ones(SHAPES[2]))
  np.testing.assert_allclose(out[..., 0], want, rtol=1e-4)


@pytest.mark.parametrize(
  "name,gamma", [("contrast_compression", 0.58), ("contrast_expansion", 2.2)]
)
def test_contrast_is_a_gamma_on_the_rescaled_image(name, gamma):
  image = _image(2)
  out = np.asarray(corruptions.corrupt(name, jax.random.key(0), image, 3))
  low, high = image.min(axis=(0, 1)), image.max(axis=(0, 1))
  want = ((image - low) / (high - low)) ** gamma * (high - low) + low
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)


def test_spike_adds_one_frequency():
  image = _image(2)[..., :1]
  out = np.asarray(corruptions.corrupt("spike", jax.random.key(2), image, 4))
  spectrum = np.abs(np.fft.fft2((out - image)[..., 0].astype(np.float64)))
  # A real stripe: one frequency and its mirror, nothing else.
  strong = spectrum > 1e-3 * spectrum.max()
  assert strong.sum() == 2
  # Amplitude: intensity x the mean of x - min.
  amplitude = np.abs(out - image).max()
  assert amplitude == pytest.approx(
    0.8 * (image - image.min()).mean(), rel=1e-3
  )


def test_bias_field_is_a_smooth_polynomial_gain():
  image = _image(2)[..., :1]
  out = np.asarray(
    corruptions.corrupt("bias_field", jax.random.key(4), image, 3)
  )
  low = image.min()
  inside = image[..., 0] > low + 1
  log_gain = np.log((out - low)[..., 0][inside] / (image - low)[..., 0][inside])
  # Least squares on the cubic monomials of coordinates in [-1, 1].
  grids = np.meshgrid(
    *[np.linspace(-1, 1, n) for n in SHAPES[2]], indexing="ij"
  )
  y, x = grids[0][inside], grids[1][inside]
  basis = np.stack(
    [y**i * x**j for i in range(4) for j in range(4) if i + j <= 3], axis=1
  )
  coefficients, *_ = np.linalg.lstsq(basis, log_gain, rcond=None)
  np.testing.assert_allclose(basis @ coefficients, log_gain, atol=1e-4)
  assert abs(coefficients[0]) < 1e-4  # no constant term (a global gain)
  assert np.max(np.abs(coefficients)) <= 0.9 + 1e-4


def test_anisotropy_keeps_one_axis_coarse():
  image = _image(2)[..., :1]
  out = np.asarray(
    corruptions.corrupt("anisotropy", jax.random.key(0), image, 5)
  )
  # Along the degraded axis the image is piecewise linear between
  # round(n / 10) samples: its second difference vanishes except at
  # those knots. The other axis keeps its detail.
  second = [np.abs(np.diff(out[..., 0], n=2, axis=a)) for a in (0, 1)]
  flat = [np.mean(s < 1e-3 * np.abs(image).max()) for s in second]
  assert max(flat) > 0.8 and min(flat) < 0.5


def test_rood_summary_matches_its_definition():
  dice, severities = [0.9, 0.8, 0.5], [1, 3]
  w1, w3 = 2 / 3, (2 / 3) ** 3
  overall, degradation = robustness.rood_summary(dice, severities)
  assert overall == pytest.approx((0.9 + w1 * 0.8 + w3 * 0.5) / (1 + w1 + w3))
  assert degradation == pytest.approx((w1 * 0.1 + w3 * 0.4) / (w1 + w3))
  assert robustness.parse_severities("3,1,0,3") == (1, 3)
  with pytest.raises(ValueError, match="--severities"):
    robustness.parse_severities("1,7")
