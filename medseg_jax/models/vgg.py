"""VGG backbones (Simonyan and Zisserman, 2015) with convolutional fc6/fc7.

Reference: K. Simonyan, A. Zisserman. "Very Deep Convolutional Networks for
Large-Scale Image Recognition". ICLR 2015. https://arxiv.org/abs/1409.1556

Five blocks of 3^d convolutions (2, 2, 3, 3, 3 of them for VGG-16) with
64, 128, 256, 512, 512 channels, each block followed by 2^d max pooling with
stride 2. As in FCN (Long et al., 2015), the classifier's fully connected
layers become convolutions: `fc6` is a 7^d convolution to 4096 channels
over `pool5` (it sees the same 7x7 window that VGG's first fully connected
layer saw on a 224x224 image) and `fc7` a 1^d convolution to 4096 channels,
each followed by ReLU and dropout. ImageNet's `fc8` is left out.

Layer names are Caffe's (`conv1_1` ... `conv5_3`, `fc6`, `fc7`), the names
FCN's published models use. Normalisation layers, when present, are named
`bn1_1` ... `bn5_3`, `bn6`, `bn7`.

Differences from the original, all optional:

* `norm`: the original has no normalisation (`norm="none"`, convolutions
  with biases); with another norm the convolutions lose their bias and
  gain a normalisation layer (VGG "-BN" style).
* `width` scales every channel count (64 ... 512 and 4096).
* Max pooling uses 'SAME' padding, so odd sizes round up rather than drop a
  row. FCN pads its input to a multiple of 32, where this makes no
  difference.
* FCN's Caffe model pads the input by 100 pixels and uses 'valid' fc6; here
  everything is 'SAME', which changes no parameter count.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax.models import layers
from medseg_jax.models import resnet

# depth -> convolutions per block.
DEPTHS: Mapping[int, tuple[int, int, int, int, int]] = {
  11: (1, 1, 2, 2, 2),
  13: (2, 2, 2, 2, 2),
  16: (2, 2, 3, 3, 3),
  19: (2, 2, 4, 4, 4),
}
BLOCK_CHANNELS = (64, 128, 256, 512, 512)
FC_CHANNELS = 4096


class VGG(nn.Module):
  """VGG feature extractor returning every pooling output (and fc7).

  Output strides and channels (`width=1`):

    key      stride  channels
    pool1    2       64
    pool2    4       128
    pool3    8       256
    pool4    16      512
    pool5    32      512
    fc7      32      4096   (only with `fc=True`)

  Every pooling maps a size `n` to `ceil(n / 2)`, so any input size works.

  With the original settings (`depth=16`, `norm="none"`, `fc=True`, 3 input
  channels) there are 14,714,688 convolutional parameters and 119,545,856
  in fc6 and fc7, 134,260,544 in all: torchvision's `vgg16` (138,357,544)
  without `fc8` (4096 * 1000 + 1000 = 4,097,000).

  Example:

    >>> backbone = VGG(width=1 / 16)
    >>> x = jnp.zeros((2, 64, 64, 1))
    >>> variables = backbone.init(jax.random.key(0), x, train=False)
    >>> backbone.apply(variables, x, train=False)["fc7"].shape
    (2, 2, 2, 256)

  Attributes:
    depth: one of `DEPTHS` (11, 13, 16, 19).
    width: multiplier on all channel counts.
    spatial_dims: 2 (`[B, H, W, C]`) or 3 (`[B, D, H, W, C]`).
    norm: `"none"` (the original), `"batch"`, `"group"` or `"instance"`.
    fc: whether to compute `fc6` and `fc7`.
    fc_kernel_size: edge length of `fc6`'s kernel, odd (7 in VGG and FCN).
    dropout_rate: dropout after `fc6` and `fc7` in training (0.5 in VGG and
      FCN); training then needs `rngs={"dropout": key}` in `apply`.
    in_channels: if set, the number of input channels is checked.
    dtype: computation dtype; parameters are float32.
  """

  depth: int = 16
  width: float = 1.0
  spatial_dims: int = 2
  norm: str = "none"
  fc: bool = True
  fc_kernel_size: int = 7
  dropout_rate: float = 0.5
  in_channels: int | None = None
  dtype: jax.typing.DTypeLike = jnp.float32

  def __post_init__(self):
    if self.depth not in DEPTHS:
      raise ValueError(
        f"Unknown VGG depth {self.depth!r}; expected one of {sorted(DEPTHS)}."
      )
    layers.check_spatial_dims(self.spatial_dims)
    layers.check_norm(self.norm)
    if self.width <= 0:
      raise ValueError(f"width must be positive, got {self.width!r}.")
    if self.fc_kernel_size < 1 or self.fc_kernel_size % 2 == 0:
      raise ValueError(
        f"fc_kernel_size must be odd, got {self.fc_kernel_size!r}."
      )
    super().__post_init__()

  @property
  def output_channels(self) -> int:
    """Channels of the last feature map (`fc7`, or `pool5` without fc)."""
    if self.fc:
      return resnet.scaled(FC_CHANNELS, self.width)
    return resnet.scaled(BLOCK_CHANNELS[-1], self.width)

  @nn.compact
  def __call__(
    self, x: jax.typing.ArrayLike, *, train: bool
  ) -> dict[str, jax.Array]:
    """Computes the pooling outputs (and fc7).

    Args:
      x: `f32[B, H, W, C]` (2-D) or `f32[B, D, H, W, C]` (3-D) image.
      train: training mode: batch statistics (with `norm="batch"`) and
        dropout.

    Returns:
      `{"pool1", ..., "pool5"[, "fc7"]}` -> `f[B, *S_k, C_k]` in `dtype`,
      with the strides and channels of the class docstring's table.

    Raises:
      ValueError: if the input rank or channels do not fit.
    """
    x = jnp.asarray(x)
    layers.check_image(
      x,
      model="VGG",
      spatial_dims=self.spatial_dims,
      in_channels=self.in_channels,
    )
    d = self.spatial_dims
    use_bias = self.norm == "none"

    def conv_norm_relu(x, features, kernel_size, name, norm_name):
      x = resnet.conv(
        features,
        kernel_size,
        spatial_dims=d,
        use_bias=use_bias,
        dtype=self.dtype,
        name=name,
      )(x)
      return layers.make_norm(
        self.norm, train=train, dtype=self.dtype, name=norm_name, relu=True
      )(x)

    x = x.astype(self.dtype)
    features = {}
    for block, (num_convs, channels) in enumerate(
      zip(DEPTHS[self.depth], BLOCK_CHANNELS, strict=True), start=1
    ):
      for i in range(1, num_convs + 1):
        x = conv_norm_relu(
          x,
          resnet.scaled(channels, self.width),
          3,
          f"conv{block}_{i}",
          f"bn{block}_{i}",
        )
      x = layers.max_pool(x, d, padding="SAME")
      features[f"pool{block}"] = x

    if self.fc:
      fc_channels = resnet.scaled(FC_CHANNELS, self.width)
      for index, kernel_size in ((6, self.fc_kernel_size), (7, 1)):
        x = conv_norm_relu(
          x, fc_channels, kernel_size, f"fc{index}", f"bn{index}"
        )
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      features["fc7"] = x
    return features
