"""ResNet backbones (He et al., 2016), laid out as in torchvision, 2-D or 3-D.

Reference: K. He, X. Zhang, S. Ren, J. Sun. "Deep Residual Learning for Image
Recognition". CVPR 2016. https://arxiv.org/abs/1512.03385

The network is the torchvision one ("ResNet v1.5"): in a bottleneck block
the stride sits on the 3^d convolution, not on the first 1^d convolution as
in the paper. Depths 18 and 34 use basic blocks (two 3^d convolutions),
50, 101 and 152 bottleneck blocks (1^d, 3^d, 1^d with a 4x wider output).
There is no classifier: the module returns the feature map of every stage,
for segmentation heads such as `FCN` and `DeepLabV3`.

Parameter names follow torchvision's state-dict keys, so that the mapping
done by `medseg_jax.models.torchvision_import` is a spelling change:

  torchvision                        here (params / batch_stats)
  conv1.weight                       conv1/kernel
  bn1.{weight,bias}                  bn1/{scale,bias}
  bn1.{running_mean,running_var}     bn1/{mean,var}
  layer2.0.conv3.weight              layer2_0/conv3/kernel
  layer2.0.downsample.0.weight       layer2_0/downsample_conv/kernel
  layer2.0.downsample.1.*            layer2_0/downsample_bn/*

Choices worth knowing:

* Padding is symmetric, `(k - 1) // 2 * dilation` on both sides of every
  axis, as in torchvision. For every convolution and pooling here this gives
  exactly the output size of 'SAME' padding, `ceil(n / stride)`, for any
  input size `n`, odd or even. It differs from Flax's 'SAME' only in where
  the window sits when the stride is 2 and `n` is even ('SAME' puts the
  extra padding at the end, shifting every window by one pixel), and it is
  what makes imported torchvision weights compute torchvision's features.
* `replace_stride_with_dilation` follows torchvision's rule: a dilated stage
  keeps the dilation of the previous stage in its first block and uses the
  multiplied dilation in the others. Unlike torchvision, basic blocks
  (depths 18 and 34) accept dilation too, so small CPU-sized DeepLab models
  can use them.
* `width` scales every channel count (base 64), so `width=1 / 16` gives a
  4-channel stem and a 128-channel `layer4` for ResNet-50.
* `norm` selects the normalisation (see `medseg_jax.models.layers`); the
  default, and the only one torchvision weights fit, is `"batch"`.
"""

from collections.abc import Mapping
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax.models import layers

# depth -> (block type, blocks per stage).
DEPTHS: Mapping[int, tuple[str, tuple[int, int, int, int]]] = {
  18: ("basic", (2, 2, 2, 2)),
  34: ("basic", (3, 4, 6, 3)),
  50: ("bottleneck", (3, 4, 6, 3)),
  101: ("bottleneck", (3, 4, 23, 3)),
  152: ("bottleneck", (3, 8, 36, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
# Keys of the dict returned by `ResNet.__call__`, finest first.
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def scaled(channels: int, width: float) -> int:
  """`channels * width`, rounded, at least 1."""
  return max(1, round(channels * width))


def dilation_for_output_stride(output_stride: int) -> tuple[bool, bool, bool]:
  """`replace_stride_with_dilation` giving `layer4` this output stride.

  Args:
    output_stride: 32 (no dilation), 16 (dilated `layer4`) or 8 (dilated
      `layer3` and `layer4`).

  Returns:
    Flags for `layer2`, `layer3`, `layer4`.
  """
  table = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
  }
  if output_stride not in table:
    raise ValueError(
      f"output_stride must be one of {sorted(table)}, got {output_stride!r}."
    )
  return table[output_stride]


def conv(
  features: int,
  kernel_size: int,
  *,
  spatial_dims: int,
  strides: int = 1,
  dilation: int = 1,
  use_bias: bool = False,
  dtype: jax.typing.DTypeLike = jnp.float32,
  kernel_init: nn.initializers.Initializer = layers.conv_init,
  name: str | None = None,
) -> layers.Conv:
  """A k^d convolution with torchvision-style symmetric padding.

  The padding, `(kernel_size - 1) // 2 * dilation` on both sides, gives the
  'SAME' output size `ceil(n / strides)` for odd `kernel_size`. It is the
  house `layers.Conv` (the parameters of `nn.Conv`), so the CPU lowering
  applies to the stride-1 3-D convolutions.

  Args:
    features: output channels.
    kernel_size: edge length of the kernel.
    spatial_dims: 2 or 3.
    strides: stride along every spatial axis.
    dilation: kernel dilation (atrous rate) along every spatial axis.
    use_bias: whether the convolution has a bias.
    dtype: computation dtype; the kernel is float32.
    kernel_init: kernel initialiser.
    name: name of the module.

  Returns:
    The (unbound) `layers.Conv`, mapping `f[B, *S, C]` to `f[B, *S',
    features]`.
  """
  pad = (kernel_size - 1) // 2 * dilation
  return layers.Conv(
    features,
    kernel_size,
    spatial_dims=spatial_dims,
    strides=strides,
    kernel_dilation=dilation,
    padding=((pad, pad),) * spatial_dims,
    use_bias=use_bias,
    kernel_init=kernel_init,
    dtype=dtype,
    name=name,
  )


class BasicBlock(nn.Module):
  """Two 3^d convolutions with a residual connection (ResNet-18/34).

  Attributes:
    planes: output channels.
    strides: stride of the first convolution (1 or 2).
    dilation: dilation of both convolutions.
    downsample: whether the shortcut is a strided 1^d convolution plus norm
      (needed when the stride or the number of channels changes).
    spatial_dims: 2 or 3.
    norm: one of `layers.NORMS`.
    dtype: computation dtype; parameters are float32.
  """

  planes: int
  strides: int = 1
  dilation: int = 1
  downsample: bool = False
  spatial_dims: int = 2
  norm: str = "batch"
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps `f[B, *S, C_in]` to `f[B, *S / strides, planes]`."""
    kw = {
      "spatial_dims": self.spatial_dims,
      "use_bias": self.norm == "none",
      "dtype": self.dtype,
    }

    def norm(name, relu=False):
      return layers.make_norm(
        self.norm, train=train, dtype=self.dtype, name=name, relu=relu
      )

    y = conv(
      self.planes,
      3,
      strides=self.strides,
      dilation=self.dilation,
      name="conv1",
      **kw,
    )(x)
    y = norm("bn1", relu=True)(y)
    y = conv(self.planes, 3, dilation=self.dilation, name="conv2", **kw)(y)
    y = norm("bn2")(y)
    if self.downsample:
      x = conv(
        self.planes, 1, strides=self.strides, name="downsample_conv", **kw
      )(x)
      x = norm("downsample_bn")(x)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """1^d, 3^d, 1^d convolutions with a residual connection (ResNet-50+).

  The stride is on the 3^d convolution (torchvision's "v1.5").

  Attributes:
    planes: channels of the inner convolutions; the output has
      `4 * planes`.
    strides: stride of the 3^d convolution (1 or 2).
    dilation: dilation of the 3^d convolution.
    downsample: whether the shortcut is a strided 1^d convolution plus norm.
    spatial_dims: 2 or 3.
    norm: one of `layers.NORMS`.
    dtype: computation dtype; parameters are float32.
  """

  planes: int
  strides: int = 1
  dilation: int = 1
  downsample: bool = False
  spatial_dims: int = 2
  norm: str = "batch"
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps `f[B, *S, C_in]` to `f[B, *S / strides, 4 * planes]`."""
    kw = {
      "spatial_dims": self.spatial_dims,
      "use_bias": self.norm == "none",
      "dtype": self.dtype,
    }
    out = self.planes * EXPANSION["bottleneck"]

    def norm(name, relu=False):
      return layers.make_norm(
        self.norm, train=train, dtype=self.dtype, name=name, relu=relu
      )

    y = conv(self.planes, 1, name="conv1", **kw)(x)
    y = norm("bn1", relu=True)(y)
    y = conv(
      self.planes,
      3,
      strides=self.strides,
      dilation=self.dilation,
      name="conv2",
      **kw,
    )(y)
    y = norm("bn2", relu=True)(y)
    y = conv(out, 1, name="conv3", **kw)(y)
    y = norm("bn3")(y)
    if self.downsample:
      x = conv(out, 1, strides=self.strides, name="downsample_conv", **kw)(x)
      x = norm("downsample_bn")(x)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """ResNet feature extractor returning every stage's output.

  Stem: 7^d convolution with stride 2 (`conv1`, `bn1`, ReLU), then 3^d max
  pooling with stride 2. Then four stages `layer1`..`layer4` of residual
  blocks with `64, 128, 256, 512` (times `width`) inner channels; stages 2-4
  halve the resolution in their first block unless replaced by dilation.

  Output strides (input size / feature size, up to rounding up) and
  channels, for `width=1`:

    key      stride          basic (18, 34)  bottleneck (50, 101, 152)
    stem     2               64              64
    layer1   4               64              256
    layer2   8               128             512
    layer3   16 (8 dilated)  256             1024
    layer4   32 (16, 8)      512             2048

  Any spatial size works: every strided layer maps `n` to `ceil(n / 2)`.

  With `width=1`, 2-D and `norm="batch"` the parameters are torchvision's
  `resnet{depth}` without its `fc` layer: 11,176,512 (18), 21,284,672 (34),
  23,508,032 (50), 42,500,160 (101), 58,143,808 (152).

  Example:

    >>> backbone = ResNet(depth=50, width=1 / 16)
    >>> x = jnp.zeros((2, 33, 45, 1))
    >>> variables = backbone.init(jax.random.key(0), x, train=False)
    >>> features = backbone.apply(variables, x, train=False)
    >>> features["layer4"].shape
    (2, 2, 2, 128)

  Attributes:
    depth: one of `DEPTHS` (18, 34, 50, 101, 152).
    width: multiplier on all channel counts (base 64).
    spatial_dims: 2 (`[B, H, W, C]`) or 3 (`[B, D, H, W, C]`).
    norm: `"batch"`, `"group"`, `"instance"` or `"none"`; convolutions have a
      bias only with `"none"`.
    replace_stride_with_dilation: three flags for `layer2`, `layer3`,
      `layer4`; a set flag replaces the stage's stride 2 by dilation 2 (see
      `dilation_for_output_stride`).
    in_channels: if set, the number of input channels is checked.
    dtype: computation dtype; parameters are float32.
  """

  depth: int = 50
  width: float = 1.0
  spatial_dims: int = 2
  norm: str = "batch"
  replace_stride_with_dilation: Sequence[bool] = (False, False, False)
  in_channels: int | None = None
  dtype: jax.typing.DTypeLike = jnp.float32

  def __post_init__(self):
    if self.depth not in DEPTHS:
      raise ValueError(
        f"Unknown ResNet depth {self.depth!r}; expected one of "
        f"{sorted(DEPTHS)}."
      )
    layers.check_spatial_dims(self.spatial_dims)
    layers.check_norm(self.norm)
    if len(self.replace_stride_with_dilation) != 3:
      raise ValueError(
        "replace_stride_with_dilation needs 3 flags (layer2, layer3, layer4), "
        f"got {self.replace_stride_with_dilation!r}."
      )
    if self.width <= 0:
      raise ValueError(f"width must be positive, got {self.width!r}.")
    super().__post_init__()

  @property
  def output_channels(self) -> int:
    """Channels of `layer4`."""
    kind, _ = DEPTHS[self.depth]
    return scaled(64, self.width) * 8 * EXPANSION[kind]

  @nn.compact
  def __call__(
    self, x: jax.typing.ArrayLike, *, train: bool
  ) -> dict[str, jax.Array]:
    """Computes the stage outputs.

    Args:
      x: `f32[B, H, W, C]` (2-D) or `f32[B, D, H, W, C]` (3-D) image.
      train: training mode; with `norm="batch"`, uses batch statistics and
        updates `batch_stats` (pass `mutable=["batch_stats"]` to `apply`).

    Returns:
      `{"stem", "layer1", ..., "layer4"}` -> `f[B, *S_k, C_k]` in `dtype`,
      with the strides and channels of the table in the class docstring.

    Raises:
      ValueError: if the input rank or channels do not fit.
    """
    x = jnp.asarray(x)
    layers.check_image(
      x,
      model="ResNet",
      spatial_dims=self.spatial_dims,
      in_channels=self.in_channels,
    )
    d = self.spatial_dims
    kind, blocks = DEPTHS[self.depth]
    block_cls = BasicBlock if kind == "basic" else Bottleneck
    base = scaled(64, self.width)

    x = x.astype(self.dtype)
    x = conv(
      base,
      7,
      spatial_dims=d,
      strides=2,
      use_bias=self.norm == "none",
      dtype=self.dtype,
      name="conv1",
    )(x)
    x = layers.make_norm(self.norm, train=train, dtype=self.dtype, name="bn1")(
      x
    )
    x = nn.relu(x)
    features = {"stem": x}
    x = layers.max_pool(x, d, ((1, 1),) * d, window=3, strides=2)

    channels = base
    dilation = 1
    dilate_flags = (False, *self.replace_stride_with_dilation)
    for stage, (num_blocks, dilate) in enumerate(
      zip(blocks, dilate_flags, strict=True)
    ):
      planes = base * 2**stage
      strides = 1 if stage == 0 else 2
      previous_dilation = dilation
      if dilate:
        dilation *= strides
        strides = 1
      out_channels = planes * EXPANSION[kind]
      for i in range(num_blocks):
        x = block_cls(
          planes,
          strides=strides if i == 0 else 1,
          dilation=previous_dilation if i == 0 else dilation,
          downsample=i == 0 and (strides != 1 or channels != out_channels),
          spatial_dims=d,
          norm=self.norm,
          dtype=self.dtype,
          name=f"layer{stage + 1}_{i}",
        )(x, train=train)
        channels = out_channels
      features[f"layer{stage + 1}"] = x
    return features
