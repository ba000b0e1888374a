"""V-Net (Milletari, Navab and Ahmadi, 2016), in 3-D and 2-D.

Reference: F. Milletari, N. Navab, S.-A. Ahmadi. "V-Net: Fully
Convolutional Neural Networks for Volumetric Medical Image Segmentation".
3DV 2016. https://arxiv.org/abs/1606.04797

An encoder-decoder like U-Net, but every resolution stage is residual
(its input is added to the output of its last convolution), kernels are
5^d, resolution is changed by learned 2^d stride-2 (transposed)
convolutions instead of pooling, and activations are PReLUs.

Differences from the paper, all deliberate:

* `norm` adds a normalisation after every convolution (the paper had none,
  `norm="none"`, the default).
* Where exactly the PReLUs sit is not spelled out in the paper. Here every
  convolution is followed by (normalisation and) a channel-wise PReLU,
  except that the last convolution of a stage gets its PReLU after the
  residual addition (`prelu(F(x) + x)`, as in residual networks); the
  stride-2 (transposed) convolutions have one PReLU each.
* The first stage's residual adds the input to all 16 channels (broadcast;
  the reference implementations replicate the one-channel input 16 times).
  Any other number of input channels (other than `features[0]`) goes
  through a 1^d projection instead.
* No dropout, and the final layer is the paper's single 1^d convolution
  (some reimplementations add a 5^d convolution before it).
* `spatial_dims=2` builds the same topology with 5x5 and 2x2 kernels.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax import sharding
from medseg_jax.models import layers


class PReLU(nn.Module):
  """Channel-wise parametric ReLU (He et al., 2015).

  `y = x` for `x >= 0` and `a_c * x` otherwise, with one learned slope
  `a_c` per channel (parameter `negative_slope: f32[C]`, initialised to
  0.25). Channel-wise slopes and 0.25 are He et al.'s choice and Caffe's
  default; V-Net was implemented in Caffe. (`flax.linen.PReLU` has one
  shared slope.)

  Attributes:
    init_slope: initial negative slope.
  """

  init_slope: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`f[..., C] -> f[..., C]`."""
    slope = self.param(
      "negative_slope",
      nn.initializers.constant(self.init_slope),
      (x.shape[-1],),
    )
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class ResidualStage(nn.Module):
  """One V-Net stage: `num_convs` k^d convolutions plus the stage input.

  `y = prelu(F(x) + x)` with `F` = (conv, norm, prelu) x (num_convs - 1),
  then (conv, norm). A 1-channel `x` is broadcast over the channels; any
  other `x` whose channels differ from `features` goes through a 1^d
  projection (`shortcut`, plus `shortcut_norm`).

  Attributes:
    features: channels of every convolution.
    num_convs: number of convolutions (1-3 in the paper).
    spatial_dims: 2 or 3.
    kernel_size: edge length of the kernels (5 in the paper).
    norm: one of `layers.NORMS`.
    dtype: computation dtype; parameters are float32.
  """

  features: int
  num_convs: int
  spatial_dims: int = 3
  kernel_size: int = 5
  norm: str = "none"
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """`f[B, *S, C_in] -> f[B, *S, features]`."""
    x = x.astype(self.dtype)
    shortcut = x
    if x.shape[-1] not in (1, self.features):
      shortcut = layers.conv(
        self.features,
        1,
        spatial_dims=self.spatial_dims,
        norm=self.norm,
        dtype=self.dtype,
        name="shortcut",
      )(x)
      shortcut = layers.make_norm(
        self.norm, train=train, dtype=self.dtype, name="shortcut_norm"
      )(shortcut)
    y = x
    for i in range(self.num_convs):
      y = layers.conv(
        self.features,
        self.kernel_size,
        spatial_dims=self.spatial_dims,
        norm=self.norm,
        dtype=self.dtype,
        name=f"conv_{i}",
      )(y)
      y = layers.make_norm(
        self.norm, train=train, dtype=self.dtype, name=f"norm_{i}"
      )(y)
      if i < self.num_convs - 1:
        y = PReLU(name=f"prelu_{i}")(y)
    return PReLU(name=f"prelu_{self.num_convs - 1}")(y + shortcut)


class Resample(nn.Module):
  """Stride-2 resampling: 2^d (transposed) convolution, norm, PReLU.

  `"down"` uses a 2^d convolution with stride 2, `"up"` a 2^d transposed
  convolution with stride 2 (`layers.UpConvTranspose`).

  Attributes:
    features: output channels.
    direction: `"down"` (halves every spatial size) or `"up"` (doubles it).
    spatial_dims: 2 or 3.
    norm: one of `layers.NORMS`.
    dtype: computation dtype; parameters are float32.
  """

  features: int
  direction: str
  spatial_dims: int = 3
  norm: str = "none"
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """`f[B, *S, C_in] -> f[B, *S/2 or *2S, features]`."""
    if self.direction == "down":
      x = layers.conv(
        self.features,
        2,
        spatial_dims=self.spatial_dims,
        norm=self.norm,
        strides=2,
        padding="VALID",
        dtype=self.dtype,
        name="conv",
      )(x)
    elif self.direction == "up":
      x = layers.UpConvTranspose(
        self.features,
        spatial_dims=self.spatial_dims,
        use_bias=self.norm == "none",
        dtype=self.dtype,
        name="conv_transpose",
      )(x)
    else:
      raise ValueError(
        f"direction must be 'down' or 'up', got {self.direction!r}."
      )
    norm = layers.make_norm(
      self.norm, train=train, dtype=self.dtype, name="norm"
    )
    return PReLU(name="prelu")(norm(x))


class VNet(nn.Module):
  """V-Net returning per-voxel class logits.

  Encoder stage `k` (`k = 0, ..., L - 1`, `L = len(features)`) is a
  `ResidualStage` of `convs[k]` 5^d convolutions with `features[k]`
  channels; between stages a 2^d stride-2 convolution halves the resolution
  and maps to `features[k + 1]` channels. Decoder stage `k` (`k = L - 2,
  ..., 0`): a 2^d stride-2 transposed convolution maps the coarser output
  to `features[k]` channels at twice the resolution, the encoder output of
  stage `k` is concatenated (`[skip, upsampled]`, `2 * features[k]`
  channels) and a `ResidualStage` of `decoder_convs[k]` convolutions with
  `2 * features[k]` channels follows. A 1^d convolution maps to
  `num_classes` logits.

  The paper's network (Fig. 2) is the default: `features=(16, 32, 64, 128,
  256)`, `convs=(1, 2, 3, 3, 3)`, decoder stages of (finest first) 1, 2, 3
  and 3 convolutions with 32, 64, 128 and 256 channels, no normalisation.
  With 1 input channel and 2 classes it has 65,175,314 parameters (hand
  count in the tests). The figure of about 45.6M often quoted for V-Net is
  that of github.com/mattmacy/vnet.pytorch (45,600,316), which follows the
  authors' released prototxt rather than the paper's figure (fewer
  convolutions: 1, 1, 2, 3, 2 per encoder stage and 2, 2, 1, 1 per decoder
  stage), and adds batch norm and a 5^3 convolution before the head.

  Example:

    >>> model = VNet(num_classes=2, features=(8, 16, 32), convs=(1, 2, 2))
    >>> x = jnp.zeros((1, 32, 32, 32, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (1, 32, 32, 32, 2)

  Attributes:
    num_classes: number of output channels (logits).
    features: channels of the encoder stages, finest first; decoder stage
      `k` has `2 * features[k]`. Spatial sizes must be multiples of
      `2 ** (len(features) - 1)` (or see `pad_input`).
    convs: convolutions per encoder stage, finest first.
    decoder_convs: convolutions per decoder stage, finest first
      (`len(features) - 1` entries); `None` means `convs[:-1]`, which for
      the default gives the paper's (1, 2, 3, 3).
    spatial_dims: 3 (`[B, D, H, W, C]`, the paper) or 2 (`[B, H, W, C]`).
    kernel_size: edge length of the stage convolutions (5 in the paper).
    norm: `"none"` (the paper), `"batch"`, `"group"` or `"instance"`; see
      `medseg_jax.models.layers`.
    in_channels: if set, the number of input channels is checked.
    dtype: computation dtype; parameters and logits are float32.
    pad_input: zero-pad inputs whose spatial sizes are not multiples of
      `2 ** (len(features) - 1)` and crop the logits back; if False such
      inputs raise a ValueError.
    remat: rematerialise every stage (`flax.linen.remat`), as in `UNet`.
    partition: mesh axis names for the leading axes of the input and of
      every stage's and resampling's output, as in `UNet`.
  """

  num_classes: int
  features: Sequence[int] = (16, 32, 64, 128, 256)
  convs: Sequence[int] = (1, 2, 3, 3, 3)
  decoder_convs: Sequence[int] | None = None
  spatial_dims: int = 3
  kernel_size: int = 5
  norm: str = "none"
  in_channels: int | None = None
  dtype: jax.typing.DTypeLike = jnp.float32
  pad_input: bool = False
  remat: bool = False
  partition: tuple[str | None, ...] | None = None

  def __post_init__(self):
    layers.check_spatial_dims(self.spatial_dims)
    layers.check_norm(self.norm)
    if len(self.features) < 2:
      raise ValueError(
        f"features must have at least two entries, got {tuple(self.features)}."
      )
    if len(self.convs) != len(self.features):
      raise ValueError(
        f"convs needs one entry per stage ({len(self.features)}), got "
        f"{tuple(self.convs)}."
      )
    decoder = self._decoder_convs()
    if len(decoder) != len(self.features) - 1:
      raise ValueError(
        f"decoder_convs needs {len(self.features) - 1} entries, got {decoder}."
      )
    if min(*self.convs, *decoder) < 1:
      raise ValueError(
        f"Every stage needs at least one convolution; got convs="
        f"{tuple(self.convs)}, decoder_convs={decoder}."
      )
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
    super().__post_init__()

  def _decoder_convs(self) -> tuple[int, ...]:
    if self.decoder_convs is None:
      return tuple(self.convs[:-1])
    return tuple(self.decoder_convs)

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Computes logits.

    Args:
      x: `f32[B, D, H, W, C]` (3-D) or `f32[B, H, W, C]` (2-D) image.
      train: training mode; with `norm="batch"`, uses batch statistics and
        updates `batch_stats` (pass `mutable=["batch_stats"]` to `apply`).

    Returns:
      `f32[B, *S, num_classes]` logits with the input's spatial size `S`.

    Raises:
      ValueError: if the input rank or channels do not fit, or the spatial
        sizes are not multiples of `2 ** (len(features) - 1)` and
        `pad_input` is False.
    """
    d = self.spatial_dims
    num_levels = len(self.features)
    x, spatial = layers.prepare_input(
      x,
      model="VNet",
      spatial_dims=d,
      in_channels=self.in_channels,
      num_downsamplings=num_levels - 1,
      pad_input=self.pad_input,
    )
    x = sharding.constrain(x.astype(self.dtype), self.partition)
    common = dict(spatial_dims=d, norm=self.norm, dtype=self.dtype)

    def run(module: nn.Module, x: jax.Array) -> jax.Array:
      return layers.apply_block(
        module, x, train=train, remat=self.remat, partition=self.partition
      )

    skips = []
    for level in range(num_levels):
      if level > 0:
        x = run(
          Resample(
            self.features[level], "down", name=f"down_{level - 1}", **common
          ),
          x,
        )
      x = run(
        ResidualStage(
          self.features[level],
          self.convs[level],
          kernel_size=self.kernel_size,
          name=f"encoder_{level}",
          **common,
        ),
        x,
      )
      skips.append(x)

    decoder_convs = self._decoder_convs()
    for level in reversed(range(num_levels - 1)):
      x = run(
        Resample(self.features[level], "up", name=f"up_{level}", **common), x
      )
      x = jnp.concatenate([skips[level], x], axis=-1)
      x = run(
        ResidualStage(
          2 * self.features[level],
          decoder_convs[level],
          kernel_size=self.kernel_size,
          name=f"decoder_{level}",
          **common,
        ),
        x,
      )

    logits = nn.Conv(
      self.num_classes,
      (1,) * d,
      kernel_init=layers.conv_init,
      dtype=jnp.float32,
      name="head",
    )(x.astype(jnp.float32))
    if self.pad_input:
      logits = layers.crop_spatial(logits, spatial)
    return logits
