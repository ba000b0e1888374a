"""The corruptions themselves: pure functions of one image at given strengths.

Every function here has the signature::

  fn(key, image, real, *, **strengths) -> image

on ONE channels-last image ``image: f[*S, C]`` (``S`` of rank 2 or 3) with
``real: bool[*S, 1]`` marking real voxels (False on padding). The
strengths are scalars, possibly traced (they come from the severity table
of :mod:`medseg_jax.corruptions.registry`); every static size (kernel
radius, number of movements) is the same at every severity, so a Python
and a traced severity give the same image.
The caller (``registry.corrupt``) restores padding voxels and returns the
input itself at severity 0.

Intensity frame. MRI artefacts act on magnitude images, whose background
is 0. Each function works on ``v = x - min`` (``min`` over real voxels, per
channel), which is non-negative, and shifts the result back. Sizes that
must scale with the image (noise spread, spike height) are relative to the
image's own statistics. So ``corrupt(a * x + b) == a * corrupt(x) + b``
for ``a > 0`` (up to rounding): a corruption gives the same picture
whether it is applied to raw scanner intensities or to an affinely
normalised image (z-score, min-max).
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from medseg_jax.augment import intensity
from medseg_jax.augment import sampling
from medseg_jax.augment import spatial

# The most movements `motion` draws (ROOD-MRI's largest count).
MAX_MOVEMENTS = 10


def moments(
  image: jax.Array, real: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-channel ``(min, mean, std)`` over real voxels, each ``f[C]``.

  Args:
    image: ``f[*S, C]``.
    real: ``bool[*S, 1]``.

  Returns:
    Three ``f[C]`` arrays; all 0 when there is no real voxel.
  """
  axes = tuple(range(image.ndim - 1))
  count = jnp.maximum(jnp.sum(real, axis=axes), 1).astype(image.dtype)
  low = jnp.min(jnp.where(real, image, jnp.inf), axis=axes)
  low = jnp.where(jnp.isfinite(low), low, jnp.zeros_like(low))
  mean = jnp.sum(jnp.where(real, image, 0), axis=axes) / count
  centred = jnp.where(real, image - mean, 0)
  std = jnp.sqrt(jnp.sum(centred**2, axis=axes) / count)
  return low, mean, std


def _spatial_axes(image: jax.Array) -> tuple[int, ...]:
  return tuple(range(image.ndim - 1))


def _frequencies(n: int) -> jax.Array:
  """Integer k-space index of each FFT bin along an axis of length ``n``:
  ``0, 1, ..., -2, -1`` (numpy's ``fftfreq(n) * n``)."""
  return jnp.asarray(np.round(np.fft.fftfreq(n) * n).astype(np.int32))


def _along(values: jax.Array, axis: int, d: int) -> jax.Array:
  """Reshapes ``values: [n]`` to broadcast along spatial ``axis`` of a
  ``[*S, C]`` array with ``d`` spatial axes."""
  shape = [1] * (d + 1)
  shape[axis] = values.shape[0]
  return values.reshape(shape)


def _per_line(axis: jax.Array, shape: tuple[int, ...], fn) -> jax.Array:
  """``fn(k, n)`` of each k-space line index along a random ``axis``.

  ``axis`` is a traced int in ``[0, d)``; ``fn`` maps the integer
  frequencies ``k: i32[n]`` of an axis of length ``n`` to per-line values.
  Returns an array broadcastable to ``[*S, 1]`` holding, at each voxel, the
  value of its line along ``axis`` (computed for every axis and selected,
  so it stays cheap and static under ``vmap``).
  """
  d = len(shape)
  out = None
  for a, n in enumerate(shape):
    values = _along(fn(_frequencies(n), n), a, d)
    values = jnp.broadcast_to(values, (*shape, 1))
    out = values if out is None else jnp.where(axis == a, values, out)
  return out


def _fft(v: jax.Array) -> jax.Array:
  return jnp.fft.fftn(v, axes=_spatial_axes(v))


def _ifft_real(spectrum: jax.Array, dtype) -> jax.Array:
  axes = tuple(range(spectrum.ndim - 1))
  return jnp.real(jnp.fft.ifftn(spectrum, axes=axes)).astype(dtype)


# ---------------------------------------------------------------------------
# Noise.


def gaussian_noise(key, image, real, *, sigma):
  """Additive Gaussian noise, std ``sigma`` times the image's std."""
  _, _, std = moments(image, real)
  values = jax.random.normal(key, image.shape, image.dtype)
  return image + sigma * std * values


def rician_noise(key, image, real, *, sigma):
  """Rician noise: the magnitude of the image plus complex Gaussian noise,
  ``sqrt((v + s n1)^2 + (s n2)^2)`` with ``s = sigma * std``, on
  ``v = x - min`` (MONAI's ``RandRicianNoise(relative=True)``)."""
  low, _, std = moments(image, real)
  k1, k2 = jax.random.split(key)
  spread = sigma * std
  n1 = jax.random.normal(k1, image.shape, image.dtype)
  n2 = jax.random.normal(k2, image.shape, image.dtype)
  v = image - low
  return jnp.sqrt((v + spread * n1) ** 2 + (spread * n2) ** 2) + low


# ---------------------------------------------------------------------------
# Smoothing, resolution and contrast.


def blur(key, image, real, *, sigma):
  """Isotropic Gaussian blur, ``sigma`` voxels (normalised over real
  voxels: padding does not bleed in), kernel radius 3 x the largest
  sigma of the table."""
  del key
  from medseg_jax.corruptions import registry  # noqa: PLC0415

  # One radius for every severity (3 std at the largest), so a severity
  # gives the same image whether it is static or traced.
  top = max(registry.get("blur").table["sigma"])
  radius = max(1, int(math.ceil(3.0 * top)))
  d = image.ndim - 1
  sigmas = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (d,))
  return intensity.smooth(image, real, sigmas, radius)


def anisotropy(key, image, real, *, factor):
  """Down-sampling by ``factor`` along one random spatial axis (nearest
  neighbour), then linear interpolation back to the grid: the thick-slice
  look of an anisotropic acquisition (TorchIO's ``RandomAnisotropy``)."""
  del real
  axis = jax.random.randint(key, (), 0, image.ndim - 1)
  out = image
  for a in _spatial_axes(image):
    # factor 1 samples every voxel at its own position: unchanged.
    chosen = jnp.where(axis == a, factor, 1.0)
    out = intensity.low_resolution_axis(out, a, chosen, 0)
  return out


def _gamma(image, real, exponent):
  low, _, _ = moments(image, real)
  axes = _spatial_axes(image)
  high = jnp.max(jnp.where(real, image, -jnp.inf), axis=axes)
  width = jnp.where(high > low, high - low, jnp.ones_like(low))
  u = jnp.clip((image - low) / width, 0, 1)
  return u**exponent * width + low


def contrast_compression(key, image, real, *, gamma):
  """Gamma ``< 1`` on the image rescaled to [0, 1]: dark tissue brightens,
  contrast between bright tissues shrinks (MONAI ``AdjustContrast``)."""
  del key
  return _gamma(image, real, gamma)


def contrast_expansion(key, image, real, *, gamma):
  """Gamma ``> 1`` on the image rescaled to [0, 1]: dark tissue darkens,
  bright contrast grows (MONAI ``AdjustContrast``)."""
  del key
  return _gamma(image, real, gamma)


def bias_field(key, image, real, *, coefficient, order=3):
  """Smooth multiplicative field ``exp(sum_m c_m p_m(x))`` over the
  monomials ``p_m`` of total degree 1 to ``order`` in coordinates scaled
  to [-1, 1], ``c_m`` uniform in ``[-coefficient, coefficient]`` (TorchIO's
  ``RandomBiasField``, less its constant term: a global gain, which the
  normalisation removes anyway); applied to ``v = x - min``."""
  low, _, _ = moments(image, real)
  shape = image.shape[:-1]
  d = len(shape)
  grids = jnp.meshgrid(
    *[jnp.linspace(-1.0, 1.0, n) for n in shape], indexing="ij"
  )
  powers = [
    p
    for p in itertools.product(range(order + 1), repeat=d)
    if 0 < sum(p) <= order
  ]
  unit = jax.random.uniform(key, (len(powers),), minval=-1.0, maxval=1.0)
  log_field = jnp.zeros(shape, jnp.float32)
  for c, power in zip(unit, powers, strict=True):
    term = jnp.ones(shape, jnp.float32)
    for grid, p in zip(grids, power, strict=True):
      term = term * grid**p
    log_field = log_field + c * term
  field = jnp.exp(coefficient * log_field).astype(image.dtype)
  return (image - low) * field[..., None] + low


# ---------------------------------------------------------------------------
# k-space artefacts.


def ghosting(key, image, real, *, intensity, restore=0.02):
  """Ghosts along a random phase-encoding axis (TorchIO's ``Ghosting``).

  Every ``n``-th line of k-space along the axis (counted from the centre)
  is scaled by ``1 - intensity``, except the central ``restore`` fraction
  of lines; the image is the real part of the inverse transform, clipped
  at the background (ROOD-MRI clips negative values). ``n`` is drawn from
  the key in ROOD-MRI's range 3-11, so it does not change with severity:
  ROOD-MRI raises it with severity, which moves the modulated lines to
  higher frequencies, where an image has less energy, so the distortion
  would shrink from one severity to the next. The deviation from the
  clean image grows linearly with ``intensity`` (before the clip).
  """
  low, _, _ = moments(image, real)
  k_axis, k_period = jax.random.split(key)
  axis = jax.random.randint(k_axis, (), 0, image.ndim - 1)
  period = jax.random.randint(k_period, (), 3, 12)

  def scale(k, n):
    keep = max(int(round(restore * n)) // 2, 0)
    hit = (jnp.remainder(k, period) == 0) & (jnp.abs(k) > keep)
    return jnp.where(hit, 1.0 - intensity, 1.0)

  factor = _per_line(axis, image.shape[:-1], scale)
  spectrum = _fft(image - low) * factor.astype(jnp.complex64)
  return jnp.maximum(_ifft_real(spectrum, image.dtype), 0) + low


def spike(key, image, real, *, intensity):
  """A k-space spike (herringbone artefact): one k-space sample at a
  random frequency, 5-45 % of the band along every axis, gets ``intensity``
  times the spectrum's largest magnitude added (TorchIO's ``Spike``), with
  a random phase; the image is the real part of the inverse transform,
  i.e. stripes of amplitude ``intensity * mean(v)``."""
  low, _, _ = moments(image, real)
  shape = image.shape[:-1]
  k_pos, k_sign, k_phase = jax.random.split(key, 3)
  fraction = jax.random.uniform(k_pos, (len(shape),), minval=0.05, maxval=0.45)
  sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (len(shape),)), 1, -1)
  sizes = jnp.asarray(shape, jnp.float32)
  index = jnp.round(sign * fraction * sizes).astype(jnp.int32)
  index = jnp.remainder(index, jnp.asarray(shape, jnp.int32))
  spectrum = _fft(image - low)
  peak = jnp.max(jnp.abs(spectrum), axis=_spatial_axes(image))  # [C]
  phase = jax.random.uniform(k_phase, (), minval=0.0, maxval=2 * jnp.pi)
  value = intensity * peak * jnp.exp(1j * phase)
  spectrum = spectrum.at[tuple(index)].add(value.astype(spectrum.dtype))
  return _ifft_real(spectrum, image.dtype) + low


def motion(key, image, real, *, degrees, translation):
  """Rigid motion during the acquisition (TorchIO's ``Motion``).

  The subject moves ``m`` times, at random moments of the scan; each move
  is to a pose rotated about the image centre by up to ``degrees`` per
  angle and shifted by up to ``translation`` voxels per axis (uniform
  draws scaled by the severity's strengths). k-space is filled line by
  line along a random axis, so each block of lines comes from the
  spectrum of the image in the pose of its time; the image is the real
  part of the inverse transform of the composite, clipped at the
  background. ``m`` is drawn from the key in ROOD-MRI's range 2-10 and
  does not change with severity: ROOD-MRI raises it with severity, but an
  extra movement can bring the subject back near the start, and the
  distortion measured on our test images then fell from one severity to
  the next.
  """
  slots = MAX_MOVEMENTS
  low, _, _ = moments(image, real)
  shape = image.shape[:-1]
  d = len(shape)
  k_axis, k_count, k_times, k_angles, k_shifts = jax.random.split(key, 5)
  axis = jax.random.randint(k_axis, (), 0, d)
  count = jax.random.randint(k_count, (), 2, slots + 1)
  times = jax.random.uniform(k_times, (slots,))
  # Movements beyond `count` happen after the scan (time 1), i.e. never.
  times = jnp.where(jnp.arange(slots) < count, times, 1.0)
  angles = jax.random.uniform(
    k_angles, (slots, 1 if d == 2 else 3), minval=-1.0, maxval=1.0
  ) * jnp.deg2rad(degrees)
  shifts = (
    jax.random.uniform(k_shifts, (slots, d), minval=-1.0, maxval=1.0)
    * translation
  )
  v = image - low
  grid = sampling.identity_grid(shape)
  centre = jnp.asarray([(n - 1) / 2 for n in shape], jnp.float32)
  centre = centre.reshape((d,) + (1,) * d)
  example = {
    "image": v,
    "label": jnp.zeros(shape, jnp.int32),
    "mask": jnp.ones(shape, jnp.float32),
  }

  def moved(angle, shift):
    rotation = spatial._rotation_matrix(angle, d)  # noqa: SLF001
    # Output y samples the input at R^-1 (y - c - t) + c.
    offset = grid - centre - shift.reshape((d,) + (1,) * d)
    coords = jnp.tensordot(rotation.T, offset, axes=1) + centre
    return sampling.resample(example, coords)["image"]

  # Poses are absolute (each a displacement from the start, as in
  # TorchIO); spectrum 0 is the starting pose, spectrum j the pose after
  # the j-th movement in time order.
  order = jnp.argsort(times)
  images = jax.vmap(moved)(angles[order], shifts[order])
  spectra = [_fft(v)] + [_fft(images[j]) for j in range(slots)]
  sorted_times = times[order]

  def segment(k, n):
    # Acquisition order: lines from the lowest to the highest frequency.
    shifted = jnp.remainder(k + n // 2, n)
    when = (shifted.astype(jnp.float32) + 0.5) / n
    return jnp.sum(when[:, None] >= sorted_times[None, :], axis=1)

  which = _per_line(axis, shape, segment)
  composite = jnp.zeros_like(spectra[0])
  for j, spectrum in enumerate(spectra):
    composite = jnp.where(which == j, spectrum, composite)
  return jnp.maximum(_ifft_real(composite, image.dtype), 0) + low
