"""Masked image modelling for convolutional encoders (SimMIM-style).

Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling" (CVPR
2022): hide a random share of square (cubic in 3-D) patches and regress
the hidden voxels; the loss counts only the hidden ones. For a U-Net the
mask is applied to the input image (hidden voxels set to 0, the mean of a
z-scored image) and the decoder's output is compared with the clean image
on the hidden patches.

Why not SparK (Tian et al., ICLR 2023)? SparK makes a convolutional
encoder see only the visible patches through sparse convolutions and
re-masks every feature map, so that the hidden area cannot leak through
the growing receptive field and no statistics are computed over the zero
fill. That needs a masked variant of every convolution and normalisation
layer of every model. The dense SimMIM variant here works with every
model of the registry unchanged, at the cost SparK names: the zero patches
shift the normalisation statistics and blur the boundary between visible
and hidden patches. See docs/pretraining.md.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def patch_mask(
  key: jax.Array,
  shape: tuple[int, ...],
  *,
  patch: int = 16,
  ratio: float = 0.6,
) -> jax.Array:
  """A random mask of whole patches, exactly ``round(ratio * n)`` of them.

  Args:
    key: PRNG key.
    shape: spatial shape ``S`` (2 or 3 axes).
    patch: patch edge, in voxels; the last patch of an axis may be cut.
    ratio: share of the ``n`` patches hidden.

  Returns:
    ``bool[*S]``: True where the voxel is hidden.
  """
  grid = tuple(-(-s // patch) for s in shape)
  count = math.prod(grid)
  hidden = round(ratio * count)
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (count,))))
  coarse = (ranks < hidden).reshape(grid)
  for axis in range(len(shape)):
    coarse = jnp.repeat(coarse, patch, axis=axis)
  return coarse[tuple(slice(0, s) for s in shape)]


def simmim(
  key: jax.Array,
  image: jax.Array,
  *,
  patch: int = 16,
  ratio: float = 0.6,
) -> tuple[jax.Array, jax.Array]:
  """Hides random patches of ``image`` (set to 0).

  Args:
    key: PRNG key.
    image: ``f32[*S, C]``, the clean input (the restoration target).
    patch: patch edge, in voxels.
    ratio: share of patches hidden.

  Returns:
    ``(masked, weight)``: ``f32[*S, C]`` with the hidden patches zero in
    every channel, and ``f32[*S]``, 1 on the hidden voxels (where the loss
    counts) and 0 elsewhere.
  """
  hidden = patch_mask(key, image.shape[:-1], patch=patch, ratio=ratio)
  masked = jnp.where(hidden[..., None], jnp.zeros((), image.dtype), image)
  return masked, hidden.astype(jnp.float32)
