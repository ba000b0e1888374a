"""nnU-Net's residual-encoder U-Net (the ResEnc M/L presets), in 2-D and 3-D.

References:

* F. Isensee, T. Wald, C. Ulrich, M. Baumgartner, S. Roy, K. Maier-Hein,
  P. Jaeger. "nnU-Net Revisited: A Call for Rigorous Validation in 3D
  Medical Image Segmentation". MICCAI 2024.
  https://arxiv.org/abs/2404.09556 (the ResEnc M/L/XL presets, nnU-Net
  >= 2.4).
* `ResidualEncoderUNet` in MIC-DKFZ/dynamic-network-architectures
  (`architectures/unet.py`, `building_blocks/residual.py` `BasicBlockD`,
  `building_blocks/residual_encoders.py`, `building_blocks/unet_decoder.py`),
  which nnU-Net instantiates from its plans.
* T. He et al. "Bag of Tricks for Image Classification with Convolutional
  Neural Networks". CVPR 2019 (ResNet-D: average pooling in the shortcut).

How nnU-Net sizes the network (`ResEncUNetPlanner`). The planner starts
from a large patch, then for each axis counts how often it can be halved
while the feature map stays at least 2 x 4 voxels (`featuremap_min_edge_length
= 4`); that gives the number of stages (poolings + 1) and the strides (2
where an axis is still halved, 1 where it is exhausted; anisotropic spacing
delays halving of the coarse axis). It shrinks the patch until a VRAM
estimate fits the preset's target, recomputing the topology each time.
Widths are `min(32 * 2^s, 320)` in 3-D and `min(32 * 2^s, 512)` in 2-D;
residual blocks per encoder stage `(1, 3, 4, 6, 6, 6, ...)`; one conv per
decoder stage; kernel 3; convolutions with bias; instance norm (eps 1e-5,
affine) and LeakyReLU(0.01).

The presets M and L share that rule and differ only in the VRAM target (M:
8 GB, L: 24 GB), hence in patch and batch size. With the same patch's stage
count they are the same network. Here the stage count defaults to the one a
large isotropic patch gives: 6 stages in 3-D (e.g. 128^3 or 192^3, five
halvings to 4-6 voxels) and 8 stages in 2-D (a 512^2 slice, seven
halvings); `num_stages` (or `stages_for_patch`) picks another. Only
isotropic stride-2 downsampling is built (`strides = (1, 2, 2, ...)`), so
the deep-supervision levels are at strides 2^k as the trainer expects.

Differences from the reference, all deliberate:

* Only isotropic strides; nnU-Net's per-axis strides for anisotropic
  spacing are not supported.
* The auxiliary heads exist only with `deep_supervision=True` (the
  reference always builds them so checkpoints load either way); the
  parameter counts below are with them.
* Initialisation is He-normal (as the reference's `InitWeights_He`), but the
  reference also zeroes the last norm scale of each residual branch
  (`init_last_bn_before_add_to_0`); here the scales start at one.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax import sharding
from medseg_jax.models import layers
from medseg_jax.models import unet

# Encoder residual blocks per stage, as nnU-Net's ResEnc planners set them.
NNUNET_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
# Preset name -> (stages in 2-D, stages in 3-D, widest stage in 2-D, in 3-D).
PRESETS = {"M": (8, 6, 512, 320), "L": (8, 6, 512, 320)}
BASE_FEATURES = 32
MIN_EDGE = 4  # nnU-Net's UNet_featuremap_min_edge_length.


def stages_for_patch(
  patch_size: Sequence[int], min_edge: int = MIN_EDGE
) -> int:
  """The number of stages nnU-Net plans for an isotropic-spacing patch.

  An axis is halved while it is at least `2 * min_edge` voxels; with
  isotropic strides the network can only halve as often as its shortest
  axis allows (nnU-Net would keep halving the longer axes with per-axis
  strides).

  Args:
    patch_size: the patch's spatial size, e.g. `(128, 128, 128)`.
    min_edge: the smallest feature-map edge nnU-Net allows.

  Returns:
    Poolings + 1, e.g. 6 for `(128, 128, 128)` and 8 for `(512, 512)`.
  """
  halvings = []
  for size in patch_size:
    count = 0
    while size >= 2 * min_edge:
      size //= 2
      count += 1
    halvings.append(count)
  return min(halvings) + 1


class ResidualBlockD(nn.Module):
  """nnU-Net's `BasicBlockD`: two k^d convolutions and a ResNet-D shortcut.

  `y = lrelu(norm(conv(lrelu(norm(conv_s(x))))) + P(x))`, where `conv_s`
  has stride `strides` and the shortcut `P` is the identity, or 2^d average
  pooling (stride 2) followed by, when the channels change, a 1^d
  convolution without bias and a norm.

  Attributes:
    features: output channels.
    spatial_dims: 2 or 3.
    strides: 1 or 2, for the first convolution and the shortcut.
    kernel_size: edge length of the convolution kernels.
    norm: one of `layers.NORMS`.
    use_bias: bias in the k^d convolutions (nnU-Net: True).
    negative_slope: of the LeakyReLU.
    dtype: computation dtype; parameters are float32.
  """

  features: int
  spatial_dims: int = 2
  strides: int = 1
  kernel_size: int = 3
  norm: str = "instance"
  use_bias: bool = True
  negative_slope: float = 0.01
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps `f[B, *S, C_in]` to `f[B, *S / strides, features]`."""
    d = self.spatial_dims
    x = x.astype(self.dtype)
    pad = ((self.kernel_size // 2,) * 2,) * d  # PyTorch's symmetric padding.
    y = x
    for i, stride in enumerate((self.strides, 1)):
      y = layers.Conv(
        self.features,
        self.kernel_size,
        spatial_dims=d,
        strides=stride,
        padding=pad,
        use_bias=self.use_bias,
        dtype=self.dtype,
        name=f"conv_{i}",
      )(y)
      y = layers.make_norm(
        self.norm, train=train, dtype=self.dtype, name=f"norm_{i}"
      )(y)
      if i == 0:
        y = nn.leaky_relu(y, self.negative_slope)
    shortcut = x
    if self.strides != 1:
      window = (self.strides,) * d
      shortcut = nn.avg_pool(shortcut, window, strides=window)
    if x.shape[-1] != self.features:
      shortcut = nn.Conv(
        self.features,
        (1,) * d,
        use_bias=False,
        kernel_init=layers.conv_init,
        dtype=self.dtype,
        name="shortcut",
      )(shortcut)
      shortcut = layers.make_norm(
        self.norm, train=train, dtype=self.dtype, name="shortcut_norm"
      )(shortcut)
    return nn.leaky_relu(y + shortcut, self.negative_slope)


class ConvNormAct(nn.Module):
  """`num_convs` x (k^d convolution, norm, LeakyReLU): nnU-Net's stem and
  decoder stages (`StackedConvBlocks`).

  Attributes:
    features: output channels.
    spatial_dims: 2 or 3.
    num_convs: number of convolutions.
    kernel_size: edge length of the kernels.
    norm: one of `layers.NORMS`.
    use_bias: bias in the convolutions.
    negative_slope: of the LeakyReLU.
    dtype: computation dtype; parameters are float32.
  """

  features: int
  spatial_dims: int = 2
  num_convs: int = 1
  kernel_size: int = 3
  norm: str = "instance"
  use_bias: bool = True
  negative_slope: float = 0.01
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps `f[B, *S, C_in]` to `f[B, *S, features]`."""
    for i in range(self.num_convs):
      x = layers.Conv(
        self.features,
        self.kernel_size,
        spatial_dims=self.spatial_dims,
        use_bias=self.use_bias,
        dtype=self.dtype,
        name=f"conv_{i}",
      )(x)
      x = layers.make_norm(
        self.norm, train=train, dtype=self.dtype, name=f"norm_{i}"
      )(x)
      x = nn.leaky_relu(x, self.negative_slope)
    return x


class ResEncUNet(nn.Module):
  """nnU-Net's residual-encoder U-Net, returning per-voxel class logits.

  Stem: one k^d convolution to `features[0]` channels (norm, LeakyReLU).
  Encoder stage `s` (`s = 0 .. n-1`, `n = num_stages`): `blocks[s]`
  `ResidualBlockD`s with `features[s]` channels, the first of which has
  stride 2 for `s > 0` (strided-convolution downsampling). Decoder, from
  the bottleneck up: a 2^d transposed convolution (stride 2, with bias) to
  `features[s]` channels, concatenation `[upsampled, skip]`, then
  `decoder_convs` k^d convolutions (norm, LeakyReLU), and a 1^d head.

  Published sizes (nnU-Net's plans for a large isotropic patch, 1 input
  channel, 2 classes, with the deep-supervision heads the reference always
  builds; checked in the tests against counts of dynamic-network-
  architectures' `ResidualEncoderUNet`):

  * 3-D, ResEnc M or L, 6 stages `(32, 64, 128, 256, 320, 320)`, blocks
    `(1, 3, 4, 6, 6, 6)`: 102,349,770 parameters.
  * 2-D, 8 stages `(32, 64, ..., 512, 512, 512, 512)`, blocks
    `(1, 3, 4, 6, 6, 6, 6, 6)`: 140,017,038 parameters.

  Deep supervision: as `UNet` (same collection, name and order): decoder
  stages `k = 1 .. n-2` get heads `aux_head_{k}` whose logits
  `f32[B, *S/2^k, num_classes]` are sown into `"aux_logits"` finest first,
  so the trainer's deep-supervision loss applies unchanged.

  Example:

    >>> model = ResEncUNet(num_classes=2, num_stages=3, features=(8, 16, 32))
    >>> x = jnp.zeros((1, 32, 32, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (1, 32, 32, 2)

  Attributes:
    num_classes: number of output channels (logits).
    spatial_dims: 2 (`[B, H, W, C]`) or 3 (`[B, D, H, W, C]`).
    preset: `"M"` or `"L"` (`PRESETS`); fills in what is left `None` below.
    num_stages: resolution stages; `None`: the preset's (6 in 3-D, 8 in
      2-D), or `len(features)` when `features` is given. Spatial sizes must
      be multiples of `2 ** (num_stages - 1)` (or see `pad_input`).
    features: channels per stage, finest first; `None`: `min(32 * 2^s,
      320 (3-D) or 512 (2-D))`.
    blocks_per_stage: residual blocks per encoder stage; `None`: nnU-Net's
      `(1, 3, 4, 6, 6, ...)`.
    decoder_convs: convolutions per decoder stage (nnU-Net: 1).
    kernel_size: edge length of all k^d kernels (nnU-Net: 3).
    norm: one of `layers.NORMS` (nnU-Net: `"instance"`).
    use_bias: bias in the k^d and transposed convolutions (nnU-Net's plans
      set `conv_bias=True`).
    in_channels: if set, the number of input channels is checked.
    dtype: computation dtype; parameters and logits are float32.
    deep_supervision: add auxiliary heads and sow their logits.
    pad_input: zero-pad inputs to multiples of `2 ** (num_stages - 1)` and
      crop the logits back.
    remat: rematerialise every block (`flax.linen.remat`).
    partition: mesh axis names for the leading axes of the input and of
      every block's output (see `UNet.partition`).
  """

  num_classes: int
  spatial_dims: int = 2
  preset: str = "M"
  num_stages: int | None = None
  features: Sequence[int] | None = None
  blocks_per_stage: Sequence[int] | None = None
  decoder_convs: int = 1
  kernel_size: int = 3
  norm: str = "instance"
  use_bias: bool = True
  in_channels: int | None = None
  dtype: jax.typing.DTypeLike = jnp.float32
  deep_supervision: bool = False
  pad_input: bool = False
  remat: bool = False
  partition: tuple[str | None, ...] | None = None

  def __post_init__(self):
    layers.check_spatial_dims(self.spatial_dims)
    layers.check_norm(self.norm)
    if self.preset not in PRESETS:
      raise ValueError(
        f"Unknown preset {self.preset!r}; expected one of {sorted(PRESETS)}."
      )
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
    n = self.resolved_num_stages()
    if self.features is not None and len(self.features) != n:
      raise ValueError(
        f"features has {len(self.features)} entries, num_stages is {n}."
      )
    if self.blocks_per_stage is not None and len(self.blocks_per_stage) != n:
      raise ValueError(
        f"blocks_per_stage has {len(self.blocks_per_stage)} entries, "
        f"num_stages is {n}."
      )
    if n < 1:
      raise ValueError(f"num_stages must be >= 1, got {n}.")
    if self.deep_supervision and n < 3:
      raise ValueError(
        f"deep_supervision needs at least 3 stages, got num_stages={n}."
      )
    super().__post_init__()

  def resolved_num_stages(self) -> int:
    """`num_stages`, else `len(features)`, else the preset's."""
    if self.num_stages is not None:
      return self.num_stages
    if self.features is not None:
      return len(self.features)
    return PRESETS[self.preset][self.spatial_dims - 2]

  def resolved_features(self) -> tuple[int, ...]:
    """Channels per stage, finest first."""
    if self.features is not None:
      return tuple(self.features)
    widest = PRESETS[self.preset][self.spatial_dims]
    n = self.resolved_num_stages()
    return tuple(min(widest, BASE_FEATURES * 2**s) for s in range(n))

  def input_multiple(self) -> int:
    """Every spatial input size must be a multiple of this."""
    return 2 ** (self.resolved_num_stages() - 1)

  def resolved_blocks(self) -> tuple[int, ...]:
    """Residual blocks per encoder stage."""
    if self.blocks_per_stage is not None:
      return tuple(self.blocks_per_stage)
    return NNUNET_BLOCKS[: self.resolved_num_stages()]

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Computes logits.

    Args:
      x: `f32[B, H, W, C]` (2-D) or `f32[B, D, H, W, C]` (3-D) image.
      train: training mode (batch norm only; instance norm is stateless).

    Returns:
      `f32[B, *S, num_classes]` logits with the input's spatial size `S`.

    Raises:
      ValueError: if the input rank or channels do not fit, or the spatial
        sizes are not multiples of `2 ** (num_stages - 1)` and `pad_input`
        is False.
    """
    d = self.spatial_dims
    features = self.resolved_features()
    blocks = self.resolved_blocks()
    n = len(features)
    x, spatial = layers.prepare_input(
      x,
      model="ResEncUNet",
      spatial_dims=d,
      in_channels=self.in_channels,
      num_downsamplings=n - 1,
      pad_input=self.pad_input,
    )
    x = sharding.constrain(x.astype(self.dtype), self.partition)
    common = dict(
      spatial_dims=d,
      kernel_size=self.kernel_size,
      norm=self.norm,
      use_bias=self.use_bias,
      dtype=self.dtype,
    )

    def run(module: nn.Module, x: jax.Array) -> jax.Array:
      return layers.apply_block(
        module, x, train=train, remat=self.remat, partition=self.partition
      )

    x = run(ConvNormAct(features[0], name="stem", **common), x)
    skips = []
    for s in range(n):
      for b in range(blocks[s]):
        stride = 2 if (b == 0 and s > 0) else 1
        block = ResidualBlockD(
          features[s], strides=stride, name=f"stage_{s}_block_{b}", **common
        )
        x = run(block, x)
      skips.append(x)

    want_aux = unet.wants_aux(self, self.deep_supervision)
    aux = {}
    x = skips.pop()
    for s in reversed(range(n - 1)):
      x = layers.UpConvTranspose(
        features[s],
        spatial_dims=d,
        use_bias=self.use_bias,
        dtype=self.dtype,
        name=f"upsample_{s}",
      )(x)
      x = jnp.concatenate([x.astype(self.dtype), skips[s]], axis=-1)
      decoder = ConvNormAct(
        features[s], num_convs=self.decoder_convs, name=f"up_{s}", **common
      )
      x = run(decoder, x)
      if want_aux and s > 0:
        aux[s] = unet.class_head(x, self.num_classes, d, f"aux_head_{s}")

    logits = unet.class_head(x, self.num_classes, d, "head")
    if self.pad_input:
      logits = layers.crop_spatial(logits, spatial)
    unet.sow_aux(self, aux, spatial, self.pad_input)
    return logits
