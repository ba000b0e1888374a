"""Intensity augmentations: gamma, brightness, contrast, noise, blur, low-res.

Same conventions as :mod:`medseg_jax.augment.spatial`: ``op(key, example,
**params) -> example`` on ONE channels-last example, applied
unconditionally. These ops change only the image, and only where
``mask > 0``: padding voxels keep their values, and statistics (min, max,
mean) are taken over real voxels only. Label and mask are returned
unchanged (the same arrays).
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from medseg_jax.augment import sampling

Example = dict[str, jax.Array]
Range = tuple[float, float]


def _draw(
  key: jax.Array, value_range: Range, count: int, dtype: jnp.dtype
) -> jax.Array:
  low, high = value_range
  return jax.random.uniform(
    key, (count,), jnp.float32, minval=low, maxval=high
  ).astype(dtype)


def _real(example: Example) -> jax.Array:
  """``bool[*S, 1]``: where the voxel is real data."""
  return (example["mask"] > 0)[..., None]


def _with_image(example: Example, image: jax.Array) -> Example:
  """Replaces the image on real voxels only; keeps padding as it was."""
  old = example["image"]
  new = jnp.where(_real(example), image.astype(old.dtype), old)
  return {**example, "image": new}


def _channel_stats(
  example: Example,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-channel ``(min, max, mean)`` over real voxels, each ``f[C]``.

  With no real voxel, all three are 0.
  """
  image = example["image"]
  real = _real(example)
  axes = tuple(range(image.ndim - 1))
  count = jnp.sum(real, axis=axes)
  any_real = count > 0
  zero = jnp.zeros((), image.dtype)
  low = jnp.min(jnp.where(real, image, jnp.inf), axis=axes)
  high = jnp.max(jnp.where(real, image, -jnp.inf), axis=axes)
  mean = jnp.sum(jnp.where(real, image, zero), axis=axes) / jnp.maximum(
    count, 1
  ).astype(image.dtype)
  return (
    jnp.where(any_real, low, zero),
    jnp.where(any_real, high, zero),
    jnp.where(any_real, mean, zero),
  )


def gamma(
  key: jax.Array,
  example: Example,
  gamma: Range = (0.7, 1.5),
  per_channel: bool = False,
  invert: bool = False,
) -> Example:
  """Gamma correction on the image rescaled to ``[0, 1]`` per channel.

  ``u = (x - min) / (max - min)`` over real voxels, ``u <- u ** gamma``
  (or ``1 - (1 - u) ** gamma`` with ``invert``), then mapped back to
  ``[min, max]``; the channel's range is kept.

  Args:
    key: PRNG key.
    example: one example (``image: f[*S, C]``, ``mask: f[*S]``).
    gamma: exponent range, > 0.
    per_channel: draw one exponent per channel instead of one for all.
    invert: apply the gamma to the inverted intensities.

  Returns:
    The example with a new image.
  """
  image = example["image"]
  channels = image.shape[-1]
  exponent = _draw(key, gamma, channels if per_channel else 1, image.dtype)
  low, high, _ = _channel_stats(example)
  width = high - low
  safe = jnp.where(width > 0, width, jnp.ones_like(width))
  u = jnp.clip((image - low) / safe, 0, 1)
  if invert:
    u = 1 - (1 - u) ** exponent
  else:
    u = u**exponent
  return _with_image(example, u * safe + low)


def brightness(
  key: jax.Array,
  example: Example,
  factor: Range = (0.75, 1.25),
  delta: Range = (0.0, 0.0),
  per_channel: bool = False,
) -> Example:
  """Multiplicative and additive brightness: ``x * factor + delta``.

  Args:
    key: PRNG key.
    example: one example.
    factor: multiplicative range, >= 0 (``(1, 1)``: additive only).
    delta: additive range in image units (``(0, 0)``: multiplicative only).
    per_channel: independent draws per channel.

  Returns:
    The example with a new image.
  """
  image = example["image"]
  count = image.shape[-1] if per_channel else 1
  k_factor, k_delta = jax.random.split(key)
  scale = _draw(k_factor, factor, count, image.dtype)
  shift = _draw(k_delta, delta, count, image.dtype)
  return _with_image(example, image * scale + shift)


def contrast(
  key: jax.Array,
  example: Example,
  factor: Range = (0.75, 1.25),
  preserve_range: bool = True,
  per_channel: bool = False,
) -> Example:
  """Contrast about the channel mean: ``(x - mean) * factor + mean``.

  Args:
    key: PRNG key.
    example: one example.
    factor: contrast range, >= 0.
    preserve_range: clip the result to the channel's original
      ``[min, max]`` over real voxels.
    per_channel: independent draws per channel.

  Returns:
    The example with a new image.
  """
  image = example["image"]
  count = image.shape[-1] if per_channel else 1
  scale = _draw(key, factor, count, image.dtype)
  low, high, mean = _channel_stats(example)
  out = (image - mean) * scale + mean
  if preserve_range:
    out = jnp.clip(out, low, high)
  return _with_image(example, out)


def noise(
  key: jax.Array,
  example: Example,
  sigma: Range = (0.0, 0.1),
) -> Example:
  """Additive Gaussian noise with a standard deviation drawn from ``sigma``.

  Args:
    key: PRNG key.
    example: one example.
    sigma: range of the noise standard deviation in image units, >= 0.

  Returns:
    The example with a new image.
  """
  image = example["image"]
  k_sigma, k_noise = jax.random.split(key)
  std = _draw(k_sigma, sigma, 1, image.dtype)
  values = jax.random.normal(k_noise, image.shape, image.dtype)
  return _with_image(example, image + std * values)


def blur(
  key: jax.Array,
  example: Example,
  sigma: Range = (0.5, 1.5),
  per_axis: bool = False,
  truncate: float = 3.0,
) -> Example:
  """Separable Gaussian blur with a random sigma (voxels).

  A normalised convolution ``blur(x * m) / blur(m)`` with ``m`` the mask,
  so padding and the space beyond the border do not bleed into real voxels.
  The kernel radius is static, ``ceil(truncate * sigma_high)``, capped at
  the axis size.

  Args:
    key: PRNG key.
    example: one example.
    sigma: range of the Gaussian standard deviation in voxels, >= 0 (0:
      no blur).
    per_axis: one sigma per spatial axis instead of one for all.
    truncate: kernel radius in standard deviations.

  Returns:
    The example with a new image.
  """
  image = example["image"]
  d = image.ndim - 1
  sigmas = _draw(key, sigma, d if per_axis else 1, jnp.float32)
  sigmas = jnp.broadcast_to(sigmas, (d,))
  radius = int(math.ceil(truncate * sigma[1]))
  return _with_image(example, smooth(image, _real(example), sigmas, radius))


def smooth(
  image: jax.Array, real: jax.Array, sigmas: jax.Array, radius: int
) -> jax.Array:
  """Separable normalised Gaussian convolution ``blur(x * m) / blur(m)``.

  Args:
    image: ``f[*S, C]``.
    real: ``bool[*S, 1]``, where the voxel is real data (padding and the
      space beyond the border do not bleed into real voxels).
    sigmas: ``f32[d]`` standard deviation per spatial axis, voxels (0: no
      blur along that axis).
    radius: static kernel radius in voxels, capped at each axis size - 1.

  Returns:
    ``f[*S, C]``; voxels with no real voxel in reach keep their value.
  """
  shape = image.shape[:-1]
  weight = real.astype(image.dtype)
  numerator = image * weight
  for a, n in enumerate(shape):
    r = min(radius, n - 1)
    offsets = jnp.arange(-r, r + 1, dtype=jnp.float32)
    std = jnp.maximum(sigmas[a], 1e-6)
    kernel = jnp.exp(-0.5 * (offsets / std) ** 2)
    kernel = (kernel / jnp.sum(kernel)).astype(image.dtype)
    numerator = sampling.convolve_axis(numerator, kernel, a)
    weight = sampling.convolve_axis(weight, kernel, a)
  safe = jnp.where(weight > 0, weight, jnp.ones_like(weight))
  return jnp.where(weight > 0, numerator / safe, image)


def low_resolution_axis(
  x: jax.Array, axis: int, factor: jax.Array, order: int
) -> jax.Array:
  """Down- then linearly up-samples one axis, keeping its static size.

  ``m = round(n / factor)`` coarse samples span the axis (corners aligned);
  the array keeps length ``n`` and coarse samples beyond ``m`` are never
  read.
  """
  n = x.shape[axis]
  if n == 1:
    return x
  coarse = jnp.clip(jnp.round(n / factor), 1, n)
  step = (n - 1) / jnp.maximum(coarse - 1, 1)
  index = jnp.arange(n, dtype=jnp.float32)
  down = sampling.sample_axis(x, jnp.minimum(index * step, n - 1), axis, order)
  up = jnp.clip(index / step, 0, coarse - 1)
  return sampling.sample_axis(down, up, axis, 1)


def low_resolution(
  key: jax.Array,
  example: Example,
  factor: Range = (1.0, 2.0),
  order: str = "nearest",
  per_axis: bool = False,
  axes: Sequence[int] | None = None,
) -> Example:
  """Simulated low resolution: downsample by a random factor, upsample.

  Each selected axis of length ``n`` is sampled at ``round(n / factor)``
  evenly spaced positions (nearest or linear) and interpolated back to
  ``n`` linearly. Shapes stay static.

  Args:
    key: PRNG key.
    example: one example.
    factor: downsampling factor range, >= 1 (1: unchanged).
    order: ``"nearest"`` or ``"linear"`` downsampling.
    per_axis: one factor per selected axis instead of one for all.
    axes: spatial axes to degrade (``None``: all), e.g. ``(1, 2)`` for the
      in-plane axes of a 3-D volume.

  Returns:
    The example with a new image.
  """
  image = example["image"]
  d = image.ndim - 1
  axes = tuple(range(d)) if axes is None else tuple(axes)
  for a in axes:
    if not 0 <= a < d:
      raise ValueError(
        f"augment op 'low_resolution': axes has axis {a}, but the example "
        f"has {d} spatial axes (valid: 0..{d - 1})."
      )
  factors = _draw(key, factor, len(axes) if per_axis else 1, jnp.float32)
  factors = jnp.broadcast_to(factors, (len(axes),))
  interpolation = {"nearest": 0, "linear": 1}[order]
  out = image
  for i, a in enumerate(axes):
    out = low_resolution_axis(out, a, factors[i], interpolation)
  return _with_image(example, out)
