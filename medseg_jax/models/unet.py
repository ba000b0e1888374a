"""U-Net (Ronneberger, Fischer and Brox, 2015), in 2-D and 3-D.

Reference: O. Ronneberger, P. Fischer, T. Brox. "U-Net: Convolutional
Networks for Biomedical Image Segmentation". MICCAI 2015.
https://arxiv.org/abs/1505.04597

Differences from the paper, all deliberate:

* Convolutions use 'SAME' padding, so the output has the input's spatial
  size and no cropping of the skip connections is needed. The paper used
  'valid' convolutions (572x572 in, 388x388 out) with overlap-tile inference.
  Padding does not change the number of parameters.
* Optional normalisation after every 3^d convolution (the paper had none; it
  predates batch norm's adoption in segmentation). `norm="none"` gives the
  paper's network.
* Optional `upsample="resize"` (linear interpolation + 1^d convolution)
  instead of the paper's 2^d transposed convolution.
* The same code builds the 3-D variant (Cicek et al., 2016 use the same
  scheme with 3^3 kernels), selected by `spatial_dims=3`.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax.models import layers

_AXIS_NAMES = {2: "H, W", 3: "D, H, W"}


class UNet(nn.Module):
  """U-Net returning per-voxel class logits.

  Per resolution level (one entry of `features`): two 3^d convolutions, each
  followed by normalisation and ReLU. The encoder halves the resolution with
  2^d max pooling between levels; the decoder doubles it (`upsample`),
  concatenates the encoder features of the same level (skip connection,
  `[skip, upsampled]` on the channel axis) and applies two more
  convolutions. A 1^d convolution maps to `num_classes` logits.

  With the paper's settings (`features=(64, 128, 256, 512, 1024)`,
  `norm="none"`, `upsample="transpose"`, 1 input channel, 2 classes) this
  has 23 convolutional layers and 31,030,658 parameters.

  Example:

    >>> model = UNet(num_classes=3, features=(8, 16, 32), norm="instance")
    >>> x = jnp.zeros((2, 64, 64, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (2, 64, 64, 3)

  With `norm="batch"`, training updates running statistics:

    >>> logits, updates = model.apply(
    ...     variables, x, train=True, mutable=["batch_stats"])

  Attributes:
    num_classes: number of output channels (logits).
    features: channels per resolution level, finest first; the last entry is
      the bottleneck. `len(features) - 1` poolings are applied, so spatial
      sizes must be multiples of `2 ** (len(features) - 1)`.
    spatial_dims: 2 (`[B, H, W, C]`) or 3 (`[B, D, H, W, C]`).
    norm: `"batch"`, `"group"`, `"instance"` or `"none"`; see
      `medseg_jax.models.layers`.
    upsample: `"transpose"` (2^d transposed convolution, stride 2, as in the
      paper) or `"resize"` (linear interpolation + 1^d convolution; fewer
      parameters and much faster on CPU).
    in_channels: if set, the number of input channels is checked.
    dtype: computation dtype (e.g. `jnp.bfloat16`). Parameters are float32
      and the logits are always float32 (the head runs in float32).
  """

  num_classes: int
  features: Sequence[int] = (64, 128, 256, 512, 1024)
  spatial_dims: int = 2
  norm: str = "batch"
  upsample: str = "transpose"
  in_channels: int | None = None
  dtype: jax.typing.DTypeLike = jnp.float32

  def __post_init__(self):
    layers.check_spatial_dims(self.spatial_dims)
    layers.check_norm(self.norm)
    if self.upsample not in layers.UPSAMPLE_MODES:
      raise ValueError(
        f"Unknown upsample {self.upsample!r}; expected one of "
        f"{layers.UPSAMPLE_MODES}."
      )
    if not self.features:
      raise ValueError("features must have at least one entry.")
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
    super().__post_init__()

  def _check_input(self, x: jax.Array) -> None:
    """Static shape checks, run at trace time."""
    d = self.spatial_dims
    expected = f"[B, {_AXIS_NAMES[d]}, C]"
    if x.ndim != d + 2:
      raise ValueError(
        f"UNet with spatial_dims={d} expects inputs of shape {expected} "
        f"({d + 2} dims), got shape {tuple(x.shape)}."
      )
    if self.in_channels is not None and x.shape[-1] != self.in_channels:
      raise ValueError(
        f"UNet expects {self.in_channels} input channels (last axis of "
        f"{expected}), got shape {tuple(x.shape)}."
      )
    factor = 2 ** (len(self.features) - 1)
    spatial = tuple(x.shape[1:-1])
    if any(s % factor for s in spatial):
      padded = tuple(-(-s // factor) * factor for s in spatial)
      raise ValueError(
        f"UNet with {len(self.features)} resolution levels pools "
        f"{len(self.features) - 1} times, so spatial sizes must be "
        f"multiples of {factor}; got {spatial} in shape {tuple(x.shape)}. "
        f"Crop, or pad e.g. to {padded}."
      )

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Computes logits.

    Args:
      x: `f32[B, H, W, C]` (2-D) or `f32[B, D, H, W, C]` (3-D) image.
      train: training mode; with `norm="batch"`, uses batch statistics and
        updates `batch_stats` (pass `mutable=["batch_stats"]` to `apply`).

    Returns:
      `f32[B, *S, num_classes]` logits with the input's spatial size `S`.

    Raises:
      ValueError: if the input rank, channels or spatial sizes do not fit.
    """
    x = jnp.asarray(x)
    self._check_input(x)
    d = self.spatial_dims
    x = x.astype(self.dtype)

    def block(features: int, name: str) -> layers.ConvBlock:
      return layers.ConvBlock(
        features,
        spatial_dims=d,
        norm=self.norm,
        dtype=self.dtype,
        name=name,
      )

    skips = []
    for level, features in enumerate(self.features[:-1]):
      x = block(features, f"down_{level}")(x, train=train)
      skips.append(x)
      x = layers.max_pool(x, d)

    x = block(self.features[-1], "bottleneck")(x, train=train)

    for level in reversed(range(len(self.features) - 1)):
      features = self.features[level]
      x = layers.UpConv(
        features,
        spatial_dims=d,
        mode=self.upsample,
        dtype=self.dtype,
        name=f"upsample_{level}",
      )(x)
      x = jnp.concatenate([skips[level], x.astype(self.dtype)], axis=-1)
      x = block(features, f"up_{level}")(x, train=train)

    return nn.Conv(
      self.num_classes,
      (1,) * d,
      kernel_init=layers.conv_init,
      dtype=jnp.float32,
      name="head",
    )(x.astype(jnp.float32))
