"""U-Net (Ronneberger, Fischer and Brox, 2015), in 2-D and 3-D.

References:

* O. Ronneberger, P. Fischer, T. Brox. "U-Net: Convolutional Networks for
  Biomedical Image Segmentation". MICCAI 2015.
  https://arxiv.org/abs/1505.04597
* O. Cicek, A. Abdulkadir, S. S. Lienkamp, T. Brox, O. Ronneberger. "3D
  U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation".
  MICCAI 2016. https://arxiv.org/abs/1606.06650
* F. Isensee et al. "nnU-Net: a self-configuring method for deep
  learning-based biomedical image segmentation". Nature Methods 2021 (deep
  supervision as used here).

Differences from the papers, all deliberate:

* Convolutions use 'SAME' padding, so the output has the input's spatial
  size and no cropping of the skip connections is needed. The papers used
  'valid' convolutions (572x572 in, 388x388 out) with overlap-tile inference.
  Padding does not change the number of parameters.
* Optional normalisation after every 3^d convolution (Ronneberger et al.
  had none; Cicek et al. used batch norm). `norm="none"` gives the 2015
  network.
* Optional `upsample="resize"` (linear interpolation + 1^d convolution)
  instead of the papers' 2^d transposed convolution.
* The same code builds the 3-D variant, selected by `spatial_dims=3`;
  `double_within_level=True` gives Cicek et al.'s channel layout.
* Optional residual blocks and nnU-Net-style deep supervision.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax import sharding
from medseg_jax.models import layers

# Collection and name under which deep-supervision logits are sown.
AUX_COLLECTION = "aux_logits"
AUX_NAME = "deep_supervision"


def class_head(
  x: jax.Array, num_classes: int, spatial_dims: int, name: str
) -> jax.Array:
  """A 1^d convolution to `num_classes` float32 logits.

  Call inside the `@nn.compact` method of the module that owns the head.

  Args:
    x: `f[B, *S, C]` features.
    num_classes: output channels.
    spatial_dims: 2 or 3.
    name: the head's name, e.g. `"head"` or `"aux_head_1"`.

  Returns:
    `f32[B, *S, num_classes]`.
  """
  return head_module(num_classes, spatial_dims, name)(x.astype(jnp.float32))


def head_module(
  num_classes: int, spatial_dims: int, name: str | None = None
) -> nn.Module:
  """The 1^d float32 convolution of `class_head` (unbound when built
  outside a module's `@nn.compact` method)."""
  return nn.Conv(
    num_classes,
    (1,) * spatial_dims,
    kernel_init=layers.conv_init,
    dtype=jnp.float32,
    name=name,
  )


def wants_aux(module: nn.Module, deep_supervision: bool) -> bool:
  """Whether `module` should compute its deep-supervision heads: at init
  (to build them) and when the caller collects `AUX_COLLECTION`."""
  return deep_supervision and (
    module.is_initializing() or module.is_mutable_collection(AUX_COLLECTION)
  )


def sow_aux(
  module: nn.Module,
  aux: dict[int, jax.Array],
  spatial: tuple[int, ...],
  pad_input: bool,
) -> None:
  """Sows deep-supervision logits finest first, cropped to `ceil(S / 2^k)`.

  Args:
    module: the model (inside its `@nn.compact` method).
    aux: level `k` -> `f32[B, *S'/2^k, classes]` logits, `S'` the padded
      input size.
    spatial: the unpadded input size `S`.
    pad_input: whether the input was padded (then the logits are cropped).
  """
  if module.is_initializing():
    return  # init builds the heads but leaves its variables clean.
  for level in sorted(aux):
    lowres = aux[level]
    if pad_input:
      lowres = layers.crop_spatial(
        lowres, tuple(-(-s // 2**level) for s in spatial)
      )
    module.sow(AUX_COLLECTION, AUX_NAME, lowres)


class UNet(nn.Module):
  """U-Net returning per-voxel class logits.

  Per resolution level (one entry of `features`): two 3^d convolutions, each
  followed by normalisation and ReLU (or, with `residual=True`, a residual
  block of the same two convolutions). The encoder halves the resolution
  with 2^d max pooling between levels; the decoder doubles it (`upsample`),
  concatenates the encoder features of the same level (skip connection,
  `[skip, upsampled]` on the channel axis) and applies two more
  convolutions. A 1^d convolution maps to `num_classes` logits.

  Channel layout. With `double_within_level=False` (default, Ronneberger et
  al.) both convolutions of level `k` have `features[k]` channels and the
  up-convolution into level `k` maps to `features[k]` channels. With
  `double_within_level=True` (Cicek et al., 2016, Fig. 2: "we avoid
  bottlenecks by doubling the number of channels already before max
  pooling") level `k` outputs `2 * features[k]` channels: in the encoder
  and bottleneck its first convolution has `features[k]` channels and its
  second `2 * features[k]`; the up-convolution keeps its input's channels;
  both decoder convolutions have `2 * features[k]`. E.g. `features=(32, 64,
  128, 256)` gives the paper's 3->32->64, 64->128, 128->256, 256->512 encoder
  and 512+256->256, 256+128->128, 128+64->64 decoder.

  Published sizes (checked in the tests, counted with 1^d head):

  * Ronneberger et al.: `features=(64, 128, 256, 512, 1024)`,
    `norm="none"`, 1 input channel, 2 classes: 23 convolutional layers,
    31,030,658 parameters.
  * Cicek et al.: `spatial_dims=3, features=(32, 64, 128, 256),
    double_within_level=True`, 3 input channels, 3 classes. With
    `norm="none"` 19,070,851 parameters; the paper states 19,069,955, which
    is exactly this minus the 896 biases of the three up-convolutions
    (512 + 256 + 128), i.e. the authors' up-convolutions had no bias. With
    `norm="batch"` (as in the paper) 19,073,187: the 2,336 biases of the
    convolutions followed by batch norm go, 2 x 2,336 scale and offset
    parameters come.

  Deep supervision (`deep_supervision=True`, nnU-Net style). Every decoder
  level below full resolution, `k = 1, ..., len(features) - 2`, gets its own
  1^d head (`aux_head_{k}`, float32). The main output is unchanged (the
  full-resolution logits). The auxiliary logits are sown into the
  collection `"aux_logits"` under the name `"deep_supervision"` as a tuple,
  finest first:

    (f32[B, *S/2, num_classes], f32[B, *S/4, num_classes], ...,
     f32[B, *S/2^(L-2), num_classes])          # L = len(features)

  Read them by making the collection mutable:

    >>> logits, state = model.apply(
    ...     variables, x, train=True, mutable=["batch_stats", "aux_logits"])
    >>> aux = state["aux_logits"]["deep_supervision"]  # tuple, finest first

  Pass only `params` (and `batch_stats`) as `variables`: sow appends to a
  tuple already present in the input variables. `init` does not sow, so its
  variables are clean. When `"aux_logits"` is not mutable (e.g. the plain
  trainer, evaluation) the auxiliary heads are not computed at all, and
  their parameters receive zero gradient. The labels for level `k` are the
  full-resolution labels downsampled by 2^k (nnU-Net: nearest neighbour),
  weighted e.g. by 1/2^k and normalised.

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
      sizes must be multiples of `2 ** (len(features) - 1)` (or see
      `pad_input`). See "Channel layout" for `double_within_level`.
    spatial_dims: 2 (`[B, H, W, C]`) or 3 (`[B, D, H, W, C]`).
    norm: `"batch"`, `"group"`, `"instance"` or `"none"`; see
      `medseg_jax.models.layers`.
    upsample: `"transpose"` (2^d transposed convolution, stride 2, as in the
      paper) or `"resize"` (linear interpolation + 1^d convolution; fewer
      parameters).
    in_channels: if set, the number of input channels is checked.
    dtype: computation dtype (e.g. `jnp.bfloat16`). Parameters are float32
      and the logits are always float32 (the heads run in float32).
    residual: use `layers.ResidualBlock` (identity or 1^d projection
      shortcut) instead of `layers.ConvBlock` at every level. Parameter
      names are unchanged apart from the added `shortcut`/`shortcut_norm`.
    deep_supervision: add auxiliary heads and sow their logits (see above).
      Needs at least three levels.
    double_within_level: Cicek et al.'s channel layout (see above).
    pad_input: zero-pad inputs whose spatial sizes are not multiples of
      `2 ** (len(features) - 1)` at the end of each axis and crop the logits
      back; if False such inputs raise a ValueError. Deep-supervision logits
      at level `k` are cropped to `ceil(S / 2^k)`.
    remat: rematerialise every block (`flax.linen.remat`): its activations
      are recomputed in the backward pass rather than stored. Same
      parameters and, up to float rounding, the same gradients.
    partition: mesh axis names for the leading axes of the input and of
      every block's output, e.g. `("data", "spatial")` to split 3-D
      activations `[B, D, H, W, C]` over batch and depth; needs a context
      mesh (`jax.set_mesh`) and is a no-op without one. See
      `medseg_jax.sharding.constrain`.
  """

  num_classes: int
  features: Sequence[int] = (64, 128, 256, 512, 1024)
  spatial_dims: int = 2
  norm: str = "batch"
  upsample: str = "transpose"
  in_channels: int | None = None
  dtype: jax.typing.DTypeLike = jnp.float32
  residual: bool = False
  deep_supervision: bool = False
  double_within_level: bool = False
  pad_input: bool = False
  remat: bool = False
  partition: tuple[str | None, ...] | None = None

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
    if self.deep_supervision and len(self.features) < 3:
      raise ValueError(
        "deep_supervision needs at least 3 levels (a decoder level below "
        f"full resolution), got features={tuple(self.features)}."
      )
    super().__post_init__()

  def input_multiple(self) -> int:
    """Every spatial input size must be a multiple of this (unless
    `pad_input`): one halving per pooling."""
    return 2 ** (len(self.features) - 1)

  def _level_channels(self, level: int) -> int:
    """Output channels of encoder/decoder level `level`."""
    scale = 2 if self.double_within_level else 1
    return scale * self.features[level]

  @nn.nowrap
  def block_module(
    self, level: int, *, encoder: bool, name: str | None = None
  ) -> nn.Module:
    """The block of `level`: `down_{level}` (or `bottleneck`) when
    `encoder`, else `up_{level}`. Called outside `__call__` it is an unbound
    module that `apply`s with that block's variables (as
    `medseg_jax.explain.incremental` does)."""
    block_cls = layers.ResidualBlock if self.residual else layers.ConvBlock
    mid = None
    if self.double_within_level and encoder:
      mid = self.features[level]
    return block_cls(
      self._level_channels(level),
      spatial_dims=self.spatial_dims,
      norm=self.norm,
      mid_features=mid,
      dtype=self.dtype,
      name=name,
    )

  @nn.nowrap
  def upsample_module(
    self, level: int, in_channels: int, name: str | None = None
  ) -> nn.Module:
    """The up-convolution into decoder level `level` (`upsample_{level}`)
    from `in_channels` channels; unbound outside `__call__`."""
    features = in_channels if self.double_within_level else self.features[level]
    return layers.UpConv(
      features,
      spatial_dims=self.spatial_dims,
      mode=self.upsample,
      dtype=self.dtype,
      name=name,
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
      With `deep_supervision=True` and `"aux_logits"` mutable, lower
      resolution logits are also sown (see the class docstring).

    Raises:
      ValueError: if the input rank or channels do not fit, or the spatial
        sizes are not multiples of `2 ** (len(features) - 1)` and
        `pad_input` is False.
    """
    d = self.spatial_dims
    num_levels = len(self.features)
    x, spatial = layers.prepare_input(
      x,
      model="UNet",
      spatial_dims=d,
      in_channels=self.in_channels,
      num_downsamplings=num_levels - 1,
      pad_input=self.pad_input,
    )
    x = sharding.constrain(x.astype(self.dtype), self.partition)

    def block(level: int, name: str, x: jax.Array, *, encoder: bool):
      module = self.block_module(level, encoder=encoder, name=name)
      return layers.apply_block(
        module, x, train=train, remat=self.remat, partition=self.partition
      )

    skips = []
    for level in range(num_levels - 1):
      x = block(level, f"down_{level}", x, encoder=True)
      skips.append(x)
      x = layers.max_pool(x, d)

    x = block(num_levels - 1, "bottleneck", x, encoder=True)

    # Auxiliary heads cost a convolution per level; skip them unless the
    # caller collects their output (init always builds them).
    want_aux = wants_aux(self, self.deep_supervision)
    aux = {}
    for level in reversed(range(num_levels - 1)):
      x = self.upsample_module(level, x.shape[-1], name=f"upsample_{level}")(x)
      x = jnp.concatenate([skips[level], x.astype(self.dtype)], axis=-1)
      x = block(level, f"up_{level}", x, encoder=False)
      if want_aux and level > 0:
        aux[level] = class_head(x, self.num_classes, d, f"aux_head_{level}")

    logits = class_head(x, self.num_classes, d, "head")
    if self.pad_input:
      logits = layers.crop_spatial(logits, spatial)
    sow_aux(self, aux, spatial, self.pad_input)
    return logits
