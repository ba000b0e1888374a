"""DeepLabV3 and DeepLabV3+ (Chen et al., 2017, 2018) over ResNet backbones.

References:

* L.-C. Chen, G. Papandreou, F. Schroff, H. Adam. "Rethinking Atrous
  Convolution for Semantic Image Segmentation". 2017.
  https://arxiv.org/abs/1706.05587 (DeepLabV3)
* L.-C. Chen, Y. Zhu, G. Papandreou, F. Schroff, H. Adam. "Encoder-Decoder
  with Atrous Separable Convolution for Semantic Image Segmentation". ECCV
  2018. https://arxiv.org/abs/1802.02611 (DeepLabV3+)

Both run a ResNet whose last stages trade stride for dilation (output
stride 16: `layer4` dilated; 8: `layer3` and `layer4`), then Atrous Spatial
Pyramid Pooling (`ASPP`) over `layer4`: in parallel a 1^d convolution, three
3^d convolutions with atrous rates (6, 12, 18) at output stride 16, doubled
at 8, and image pooling (global average, 1^d convolution, broadcast back),
each with normalisation and ReLU; the concatenation is projected by a 1^d
convolution (normalisation, ReLU, dropout).

* `DeepLabV3`: ASPP, a 3^d convolution (normalisation, ReLU) and a 1^d
  classifier, then bilinear upsampling to the input size. This is
  torchvision's `DeepLabHead`; the paper has no 3^d convolution after ASPP,
  but torchvision's is the published implementation whose parameter count
  we match.
* `DeepLabV3Plus`: the ASPP output is upsampled (bilinear) to the size of
  `layer1` (stride 4), concatenated with a 48-channel 1^d projection of
  `layer1`, refined by two 3^d convolutions with 256 channels and
  classified; the logits are upsampled to the input size. These are the
  paper's best decoder settings (Tables 1-2) with ResNet instead of
  Xception and plain instead of depthwise-separable convolutions.

Input sizes: any. Every strided layer maps `n` to `ceil(n / 2)` and all
resampling is bilinear resizing to an explicit target size (as in
torchvision), so no padding or cropping is needed.

Not implemented: multi-grid dilation in `layer4` and the Xception backbone
of the papers, separable convolutions, the auxiliary FCN head of
torchvision's `aux_loss=True`.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax.models import layers
from medseg_jax.models import resnet

DEFAULT_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def _resize(x: jax.Array, spatial_shape: Sequence[int]) -> jax.Array:
  """(Bi/tri)linear resize of `f[B, *S, C]` to `f[B, *spatial_shape, C]`."""
  shape = (x.shape[0], *spatial_shape, x.shape[-1])
  if shape == x.shape:
    return x
  return jax.image.resize(x, shape, method="linear")


class ConvNormReLU(nn.Module):
  """k^d convolution (no bias unless `norm="none"`), normalisation, ReLU.

  Parameters live in the children `conv` and `bn`.

  Attributes:
    features: output channels.
    kernel_size: edge length of the kernel (odd).
    dilation: atrous rate.
    spatial_dims: 2 or 3.
    norm: one of `layers.NORMS`.
    dtype: computation dtype; parameters are float32.
  """

  features: int
  kernel_size: int = 1
  dilation: int = 1
  spatial_dims: int = 2
  norm: str = "batch"
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps `f[B, *S, C_in]` to `f[B, *S, features]`."""
    x = resnet.conv(
      self.features,
      self.kernel_size,
      spatial_dims=self.spatial_dims,
      dilation=self.dilation,
      use_bias=self.norm == "none",
      dtype=self.dtype,
      name="conv",
    )(x)
    return layers.make_norm(
      self.norm, train=train, dtype=self.dtype, name="bn", relu=True
    )(x)


class ASPP(nn.Module):
  """Atrous Spatial Pyramid Pooling with image pooling (DeepLabV3, Sec. 3.3).

  Children: `conv_1x1`; `atrous_0`, `atrous_1`, ... (one per rate);
  `pooling`; `project`. Each is a `ConvNormReLU`.

  With 2048 input channels, 256 features, three rates and batch norm there
  are 15,535,104 parameters (3,072 of them normalisation scales and
  shifts), as in torchvision's `ASPP`.

  With `norm="instance"` the pooling branch has no normalisation (and a
  bias instead): instance norm of a single pooled voxel would be constant.

  Attributes:
    features: channels of every branch and of the output (256 in the
      papers).
    atrous_rates: dilation of each 3^d branch.
    spatial_dims: 2 or 3.
    norm: one of `layers.NORMS`.
    dropout_rate: dropout after the projection in training.
    dtype: computation dtype; parameters are float32.
  """

  features: int = 256
  atrous_rates: Sequence[int] = (6, 12, 18)
  spatial_dims: int = 2
  norm: str = "batch"
  dropout_rate: float = 0.1
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps `f[B, *S, C_in]` to `f[B, *S, features]`."""
    d = self.spatial_dims

    def block(kernel_size, dilation, name):
      return ConvNormReLU(
        self.features,
        kernel_size=kernel_size,
        dilation=dilation,
        spatial_dims=d,
        norm=self.norm,
        dtype=self.dtype,
        name=name,
      )

    branches = [block(1, 1, "conv_1x1")(x, train=train)]
    for i, rate in enumerate(self.atrous_rates):
      branches.append(block(3, rate, f"atrous_{i}")(x, train=train))
    spatial_axes = tuple(range(1, d + 1))
    pooled = jnp.mean(x, axis=spatial_axes, keepdims=True)
    pooled = ConvNormReLU(
      self.features,
      spatial_dims=d,
      norm="none" if self.norm == "instance" else self.norm,
      dtype=self.dtype,
      name="pooling",
    )(pooled, train=train)
    branches.append(jnp.broadcast_to(pooled, branches[0].shape))
    y = jnp.concatenate(branches, axis=-1)
    y = block(1, 1, "project")(y, train=train)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class _DeepLabBase(nn.Module):
  """Attributes and checks shared by `DeepLabV3` and `DeepLabV3Plus`."""

  num_classes: int
  backbone: str = "resnet50"
  output_stride: int = 16
  atrous_rates: Sequence[int] | None = None
  aspp_features: int = 256
  width: float = 1.0
  spatial_dims: int = 2
  norm: str = "batch"
  dropout_rate: float = 0.1
  in_channels: int | None = None
  dtype: jax.typing.DTypeLike = jnp.float32

  def __post_init__(self):
    self._depth()
    if self.output_stride not in DEFAULT_RATES:
      raise ValueError(
        f"output_stride must be one of {sorted(DEFAULT_RATES)}, got "
        f"{self.output_stride!r}."
      )
    layers.check_spatial_dims(self.spatial_dims)
    layers.check_norm(self.norm)
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
    super().__post_init__()

  def _depth(self) -> int:
    prefix = "resnet"
    suffix = self.backbone[len(prefix) :]
    if (
      not self.backbone.startswith(prefix)
      or not suffix.isdigit()
      or int(suffix) not in resnet.DEPTHS
    ):
      valid = [f"resnet{d}" for d in resnet.DEPTHS]
      raise ValueError(
        f"Unknown backbone {self.backbone!r}; expected one of {valid}."
      )
    return int(suffix)

  @property
  def rates(self) -> tuple[int, ...]:
    """ASPP rates: `atrous_rates`, or the default for `output_stride`."""
    if self.atrous_rates is not None:
      return tuple(self.atrous_rates)
    return DEFAULT_RATES[self.output_stride]

  def _features(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    layers.check_image(
      x,
      model=type(self).__name__,
      spatial_dims=self.spatial_dims,
      in_channels=self.in_channels,
    )
    return resnet.ResNet(
      depth=self._depth(),
      width=self.width,
      spatial_dims=self.spatial_dims,
      norm=self.norm,
      replace_stride_with_dilation=resnet.dilation_for_output_stride(
        self.output_stride
      ),
      dtype=self.dtype,
      name="backbone",
    )(x, train=train)

  def _aspp(self, x: jax.Array, train: bool) -> jax.Array:
    return ASPP(
      self.aspp_features,
      atrous_rates=self.rates,
      spatial_dims=self.spatial_dims,
      norm=self.norm,
      dropout_rate=self.dropout_rate,
      dtype=self.dtype,
      name="aspp",
    )(x, train=train)

  def _block(self, features: int, kernel_size: int, name: str) -> ConvNormReLU:
    return ConvNormReLU(
      features,
      kernel_size=kernel_size,
      spatial_dims=self.spatial_dims,
      norm=self.norm,
      dtype=self.dtype,
      name=name,
    )

  def _classify(self, x: jax.Array, sizes: Sequence[int]) -> jax.Array:
    logits = nn.Conv(
      self.num_classes,
      (1,) * self.spatial_dims,
      kernel_init=layers.conv_init,
      dtype=jnp.float32,
      name="classifier",
    )(x.astype(jnp.float32))
    return _resize(logits, sizes)


class DeepLabV3(_DeepLabBase):
  """DeepLabV3: dilated ResNet, ASPP, 3^d convolution, 1^d classifier.

  Children: `backbone` (`resnet.ResNet`), `aspp` (`ASPP`), `head_conv`
  (`ConvNormReLU`, 3^d, `aspp_features` channels) and `classifier` (1^d,
  with bias).

  With `backbone="resnet50"`, `width=1`, 3 input channels and 21 classes
  there are 39,638,869 parameters, torchvision's
  `deeplabv3_resnet50(num_classes=21, aux_loss=False)`; with ResNet-101,
  58,630,997.

  Example:

    >>> model = DeepLabV3(num_classes=3, width=1 / 16, aspp_features=16)
    >>> x = jnp.zeros((2, 33, 45, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (2, 33, 45, 3)

  Attributes:
    num_classes: number of output channels (logits).
    backbone: `"resnet18"`, `"resnet34"`, `"resnet50"`, `"resnet101"` or
      `"resnet152"`.
    output_stride: 16 (dilated `layer4`) or 8 (dilated `layer3` and
      `layer4`).
    atrous_rates: ASPP rates; default (6, 12, 18) at output stride 16 and
      (12, 24, 36) at 8.
    aspp_features: channels of the ASPP branches and output (256).
    width: channel multiplier of the backbone (1 is the published size).
    spatial_dims: 2 (`[B, H, W, C]`) or 3 (`[B, D, H, W, C]`).
    norm: `"batch"` (the papers), `"group"`, `"instance"` or `"none"`.
    dropout_rate: dropout after the ASPP projection in training (0.1 as in
      the official TensorFlow code; torchvision uses 0.5). Training with a
      nonzero rate needs `rngs={"dropout": key}` in `apply`.
    in_channels: if set, the number of input channels is checked.
    dtype: computation dtype (e.g. `jnp.bfloat16`). Parameters are float32
      and the logits are always float32.
  """

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Computes logits.

    Args:
      x: `f32[B, H, W, C]` (2-D) or `f32[B, D, H, W, C]` (3-D) image, any
        spatial size.
      train: training mode: batch statistics (with `norm="batch"`, pass
        `mutable=["batch_stats"]`) and dropout.

    Returns:
      `f32[B, *S, num_classes]` logits with the input's spatial size `S`.

    Raises:
      ValueError: if the input rank or channels do not fit.
    """
    x = jnp.asarray(x)
    features = self._features(x, train)
    y = self._aspp(features["layer4"], train)
    y = self._block(self.aspp_features, 3, "head_conv")(y, train=train)
    return self._classify(y, x.shape[1:-1])


class DeepLabV3Plus(_DeepLabBase):
  """DeepLabV3+: DeepLabV3's encoder with a decoder on stride-4 features.

  Children: `backbone` (`resnet.ResNet`), `aspp` (`ASPP`),
  `low_level_project` (1^d, `low_level_features` channels), `decoder_0`,
  `decoder_1` (3^d, `decoder_features` channels; all `ConvNormReLU`) and
  `classifier` (1^d, with bias).

  With `backbone="resnet101"`, `width=1`, 3 input channels and 21 classes
  there are 59,344,309 parameters: 42,500,160 (ResNet-101), 15,535,104
  (ASPP), 12,384 (1x1 256 -> 48 + norm), 700,928 + 590,336 (3x3 304 -> 256
  and 256 -> 256, + norm) and 5,397 (1x1 256 -> 21 + bias).

  Example:

    >>> model = DeepLabV3Plus(num_classes=3, width=1 / 16, aspp_features=16,
    ...                       low_level_features=8, decoder_features=16)
    >>> x = jnp.zeros((2, 33, 45, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (2, 33, 45, 3)

  Attributes:
    low_level_features: channels of the `layer1` projection (48).
    decoder_features: channels of the decoder's 3^d convolutions (256).
    (others): as `DeepLabV3`.
  """

  low_level_features: int = 48
  decoder_features: int = 256

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Computes logits.

    Args:
      x: `f32[B, H, W, C]` (2-D) or `f32[B, D, H, W, C]` (3-D) image, any
        spatial size.
      train: training mode: batch statistics (with `norm="batch"`, pass
        `mutable=["batch_stats"]`) and dropout.

    Returns:
      `f32[B, *S, num_classes]` logits with the input's spatial size `S`.

    Raises:
      ValueError: if the input rank or channels do not fit.
    """
    x = jnp.asarray(x)
    features = self._features(x, train)
    y = self._aspp(features["layer4"], train)
    low = self._block(self.low_level_features, 1, "low_level_project")(
      features["layer1"], train=train
    )
    y = _resize(y, low.shape[1:-1]).astype(low.dtype)
    y = jnp.concatenate([y, low], axis=-1)
    for i in range(2):
      y = self._block(self.decoder_features, 3, f"decoder_{i}")(y, train=train)
    return self._classify(y, x.shape[1:-1])
