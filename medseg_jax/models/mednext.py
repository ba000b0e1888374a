"""MedNeXt (Roy et al., 2023): a ConvNeXt-style U-Net, in 2-D and 3-D.

References:

* S. Roy, G. Koehler, C. Ulrich, M. Baumgartner, J. Petersen, F. Isensee,
  P. F. Jaeger, K. Maier-Hein. "MedNeXt: Transformer-driven Scaling of
  ConvNets for Medical Image Segmentation". MICCAI 2023.
  https://arxiv.org/abs/2303.09975
* The authors' code, MIC-DKFZ/MedNeXt (`network_architecture/mednextv1/
  MedNextV1.py`, `blocks.py`, `create_mednext_v1.py`,
  `run/load_weights.py` for UpKern), and MONAI's port
  (`monai/networks/nets/mednext.py`).

Architecture. A 1^d stem to `C = base_features` channels; `L` resolution
levels (5 in the paper: four downsamplings); at level `l` (width
`C * 2^l`) `blocks[l]` MedNeXt blocks in the encoder and `blocks[2L-2-l]`
in the decoder, `blocks[L-1]` in the bottleneck. A MedNeXt block is

  x + compress(gelu(expand(norm(depthwise_k(x)))))

with a depthwise k^d convolution, a group norm with one group per channel,
a 1^d expansion by the ratio `expansion[i]` and a 1^d compression back.
Downsampling blocks are the same with a stride-2 depthwise convolution and
a doubling compression, plus a residual 1^d stride-2 convolution; upsampling
blocks use a stride-2 depthwise transposed convolution, a halving
compression and a residual 1^d stride-2 transposed convolution. The
decoder adds (not concatenates) the encoder features of the same level.
The down block into level `l` expands by `expansion[l]`, the up block into
level `l` by the ratio of the decoder stage it feeds, as in the authors'
code (MONAI's port uses the ratio of the stage the down block leaves, which
changes the counts of B, M and L slightly).

Sizes (paper Table 1 / `create_mednext_v1.py`; `C = 32`, 5 levels; the
nine entries run encoder levels 0-3, bottleneck, decoder levels 3-0):

  S: expansion 2 everywhere,            blocks (2,) * 9
  B: expansion (2,3,4,4,4,4,4,3,2),     blocks (2,) * 9
  M: expansion (2,3,4,4,4,4,4,3,2),     blocks (3,4,4,4,4,4,4,4,3)
  L: expansion (3,4,8,8,8,8,8,4,3),     blocks (3,4,8,8,8,8,8,4,3)

Kernel 3 or 5 (`kernel_size`); the paper trains kernel 5 from a trained
kernel-3 network with UpKern (`upkern`).

Deep supervision: the authors' heads `out_1 .. out_4` sit after decoder
levels 1-3 and on the bottleneck (level 4). Here heads `aux_head_{l}`, `l =
1 .. L-1`, give `f32[B, *S/2^l, num_classes]`, sown into `"aux_logits"`
finest first like `UNet`'s, so the trainer's deep supervision applies
unchanged.

Differences from the authors' code, all deliberate:

* The upsampling transposed convolution produces `2S` outputs directly
  (PyTorch's gives `2S - 1` and the authors pad a zero row in front); the
  input taps land where theirs do, but the first row is computed rather
  than zero. The residual 1^d transposed convolution is theirs: it writes
  every input voxel to the odd positions of its 2^d output block and
  leaves the others zero. Parameters are unchanged.
* No `dummy_tensor` parameter (a PyTorch checkpointing work-around), so
  counts are one less than the authors' module.
* The depthwise convolutions are not `layers.Conv` (which has no groups):
  on the CPU they are sums of k^d shifted copies (`_depthwise_taps`, much
  faster there than XLA's grouped convolution), elsewhere `jax.lax` grouped
  convolutions; `DepthwiseConv.impl` picks one. The 1^d convolutions are
  matmuls.
"""

import functools
import itertools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax import sharding
from medseg_jax.models import layers
from medseg_jax.models import lowering
from medseg_jax.models import unet

# Size name -> (expansion ratios, blocks), nine entries each.
SIZES = {
  "S": ((2,) * 9, (2,) * 9),
  "B": ((2, 3, 4, 4, 4, 4, 4, 3, 2), (2,) * 9),
  "M": ((2, 3, 4, 4, 4, 4, 4, 3, 2), (3, 4, 4, 4, 4, 4, 4, 4, 3)),
  "L": ((3, 4, 8, 8, 8, 8, 8, 4, 3), (3, 4, 8, 8, 8, 8, 8, 4, 3)),
}

_gelu = jax.tree_util.Partial(jax.nn.gelu, approximate=False)  # torch's GELU.


class DepthwiseConv(nn.Module):
  """A depthwise k^d convolution: `"same"`, `"down"` (stride 2) or `"up"`.

  Parameters as `nn.Conv(C, (k,) * d, feature_group_count=C)`: `kernel:
  f32[k, ..., k, 1, C]`, `bias: f32[C]`. `"down"` pads `k // 2` on both
  sides (PyTorch's padding, not XLA's asymmetric 'SAME') and halves even
  sizes; `"up"` is a stride-2 transposed convolution to exactly twice the
  size, input voxel `i` under the kernel centre at output `2i + 1`.

  Attributes:
    kernel_size: odd edge length.
    spatial_dims: 2 or 3.
    mode: `"same"`, `"down"` or `"up"`.
    dtype: computation dtype; parameters are float32.
  """

  kernel_size: int
  spatial_dims: int = 2
  mode: str = "same"
  dtype: jax.typing.DTypeLike = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`f[B, *S, C]` -> `f[B, *S', C]`, `S' = S, S / 2 or 2 S`."""
    d, k, c = self.spatial_dims, self.kernel_size, x.shape[-1]
    kernel = self.param(
      "kernel", layers.conv_init, (k,) * d + (1, c), jnp.float32
    )
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    p = k // 2
    strides, lhs_dilation, pads = (1,) * d, (1,) * d, ((p, p),) * d
    if self.mode == "down":
      strides = (2,) * d
    elif self.mode == "up":
      lhs_dilation, pads = (2,) * d, ((p + 1, p),) * d
    elif self.mode != "same":
      raise ValueError(f"Unknown mode {self.mode!r}; expected same/down/up.")
    impl = self.impl
    if impl == "auto":
      impl = "taps" if lowering.choose().backend == "cpu" else "xla"
    if impl == "taps":
      if self.mode == "up":
        return _depthwise_taps_up(x, kernel) + bias
      return _depthwise_taps(x, kernel, strides[0], pads) + bias
    if impl != "xla":
      raise ValueError(f"Unknown impl {impl!r}; expected auto, xla or taps.")
    spec = "NDHWC" if d == 3 else "NHWC"
    y = jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=strides,
      padding=pads,
      lhs_dilation=lhs_dilation,
      dimension_numbers=(spec, spec[1:-1] + "IO", spec),
      feature_group_count=c,
    )
    return y + bias


def _shifted_sum(
  x: jax.Array,
  kernel: jax.Array,
  stride: int,
  pads: tuple[tuple[int, int], ...],
  dilation: int = 1,
) -> jax.Array:
  """`sum_t kernel[t] * shift_t(x)`: a depthwise convolution in plain JAX.

  `x` is dilated by `dilation` (zeros between voxels) and padded by `pads`
  first; then each tap `t` adds a strided window of it, scaled per channel.
  `_depthwise_taps` wraps it with a written-out gradient.
  """
  k = kernel.shape[0]
  config = [(0, 0, 0)] + [(lo, hi, dilation - 1) for lo, hi in pads]
  padded = jax.lax.pad(x, jnp.zeros((), x.dtype), config + [(0, 0, 0)])
  out = [(n - k) // stride + 1 for n in padded.shape[1:-1]]
  y = None
  for taps, window in _tap_windows(padded, k, stride, out):
    term = window * kernel[taps][0]
    y = term if y is None else y + term
  return y


def _tap_windows(padded: jax.Array, k: int, stride: int, out: Sequence[int]):
  """Yields `(tap, window)`: the strided window of `padded` under each of
  the k^d kernel taps, `out` voxels per spatial axis."""
  for taps in itertools.product(range(k), repeat=padded.ndim - 2):
    window = tuple(
      slice(t, t + stride * (o - 1) + 1, stride)
      for t, o in zip(taps, out, strict=True)
    )
    yield taps, padded[(slice(None), *window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_taps(
  x: jax.Array,
  kernel: jax.Array,
  stride: int,
  pads: tuple[tuple[int, int], ...],
) -> jax.Array:
  """A depthwise convolution as a sum of shifted, scaled copies of `x`.

  The function of `lax.conv_general_dilated(..., feature_group_count=C)`
  with these strides and paddings. XLA:CPU runs grouped convolutions, and
  above all their gradients, through a slow generic loop; this is k^d
  fused multiply-adds. Its gradient is written out rather than derived:
  differentiating the k^d slices gives k^d zero-padded full-size copies of
  the cotangent (each recomputing the cotangent's producers), while the
  input gradient is itself a shifted sum, of the cotangent under the
  flipped kernel, and the kernel gradient k^d reductions.

  Args:
    x: `f[B, *S, C]`.
    kernel: `f[*K, 1, C]`.
    stride: along every spatial axis.
    pads: `(low, high)` per spatial axis.

  Returns:
    `f[B, *S', C]`.
  """
  return _shifted_sum(x, kernel, stride, pads)


def _depthwise_taps_fwd(x, kernel, stride, pads):
  return _shifted_sum(x, kernel, stride, pads), (x, kernel)


def _depthwise_taps_bwd(stride, pads, residuals, g):
  x, kernel = residuals
  d = x.ndim - 2
  k = kernel.shape[0]
  # Materialise the cotangent once rather than fuse its producers into
  # each of the k^d consumers below.
  g = jax.lax.optimization_barrier(g)
  # Input gradient: the transposed convolution, i.e. the cotangent dilated
  # by the stride, padded so that the sizes come back, under the flipped
  # kernel. `extra` is what the forward's windows left over at the end.
  back = []
  for (lo, hi), n, o in zip(pads, x.shape[1:-1], g.shape[1:-1], strict=True):
    extra = n + lo + hi - k - stride * (o - 1)
    back.append((k - 1 - lo, k - 1 - hi + extra))
  flipped = kernel[(slice(None, None, -1),) * d]
  dx = _shifted_sum(g, flipped, 1, tuple(back), dilation=stride)
  # Kernel gradient: one reduction per tap, accumulated in float32.
  config = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)]
  padded = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
  taps = [
    jnp.sum(window * g, axis=tuple(range(d + 1)), dtype=jnp.float32)
    for _, window in _tap_windows(padded, k, stride, g.shape[1:-1])
  ]
  dkernel = jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)
  return dx.astype(x.dtype), dkernel


_depthwise_taps.defvjp(_depthwise_taps_fwd, _depthwise_taps_bwd)


def _depthwise_taps_up(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`DepthwiseConv(mode="up")` by output phase, without the zeros.

  The stride-2 transposed convolution reads an input dilated by 2 and
  padded `(k // 2 + 1, k // 2)`. Along one axis, output `2m + r` (phase
  `r` in {0, 1}) sees input `m + (r + t - k // 2 - 1) / 2` under tap `t`
  for the taps that make that an integer, and the zeros under the others.
  So each of the 2^d phases is a small depthwise sum over the undilated
  input, and the phases interleave into the output: k^d multiply-adds per
  input voxel in all, instead of k^d per output voxel over a mostly-zero
  input (8x the work in 3-D, and slow strided gradients).

  Args:
    x: `f[B, *S, C]`.
    kernel: `f[*K, 1, C]`, odd `K`.

  Returns:
    `f[B, *2S, C]`.
  """
  d = x.ndim - 2
  k = kernel.shape[0]
  p = k // 2
  margin = p // 2 + 1  # The largest shift either way.
  config = [(0, 0, 0)] + [(margin, margin, 0)] * d + [(0, 0, 0)]
  padded = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
  size = x.shape[1:-1]
  # Per phase r: the (tap, shift) pairs along one axis.
  taps_of = {
    r: [(t, (r + t - p - 1) // 2) for t in range(k) if (r + t - p - 1) % 2 == 0]
    for r in (0, 1)
  }
  phases = []
  for phase in itertools.product((0, 1), repeat=d):
    y = None
    for combo in itertools.product(*(taps_of[r] for r in phase)):
      window = tuple(
        slice(margin + s, margin + s + n)
        for (_, s), n in zip(combo, size, strict=True)
      )
      tap = tuple(t for t, _ in combo)
      term = padded[(slice(None), *window)] * kernel[tap][0]
      y = term if y is None else y + term
    phases.append(y)
  # [2^d, B, *S, C] -> [B, S_1, 2, ..., S_d, 2, C] -> [B, *2S, C]: phase r
  # of axis a lands at 2m + r.
  y = jnp.stack(phases).reshape((2,) * d + phases[0].shape)
  order = [d] + [i for a in range(d) for i in (d + 1 + a, a)] + [2 * d + 1]
  y = y.transpose(order)
  return y.reshape((x.shape[0], *(2 * n for n in size), x.shape[-1]))


@jax.custom_vjp
def _store_cotangent(x: jax.Array) -> jax.Array:
  """Identity whose backward pass materialises the cotangent once.

  Without it XLA:CPU fuses the exact GELU's derivative (an `exp` and an
  `erf` per element) into each of its three consumers, the bias
  reduction, the weight gradient's transpose and the input gradient, and
  so computes it three times over the block's widest tensor.
  """
  return x


_store_cotangent.defvjp(
  lambda x: (x, None),
  lambda _, g: (jax.lax.optimization_barrier(g),),
)


def _pointwise(features: int, dtype, name: str) -> nn.Dense:
  """A 1^d convolution (with bias) as a matmul over the channel axis."""
  return nn.Dense(
    features, kernel_init=layers.conv_init, dtype=dtype, name=name
  )


def _scatter_odd(y: jax.Array, spatial_dims: int) -> jax.Array:
  """`f[B, *S, C]` -> `f[B, *2S, C]` with `y` at odd positions, 0 elsewhere.

  What a 1^d stride-2 transposed convolution followed by the authors'
  one-voxel front padding does to its (already projected) input.
  """
  config = [(0, 0, 0)] + [(1, 0, 1)] * spatial_dims + [(0, 0, 0)]
  return jax.lax.pad(y, jnp.zeros((), y.dtype), config)


class MedNeXtBlock(nn.Module):
  """MedNeXt block, and its down- and upsampling variants.

  `y = compress(gelu(expand(norm(dw(x)))))`, then `y + x` (`"same"`),
  `y + conv1x1_stride2(x)` (`"down"`) or `y + scatter(conv1x1(x))`
  (`"up"`, see `_scatter_odd`).

  Attributes:
    features: output channels (`"same"`: must equal the input's).
    expansion: ratio of the hidden width to the input channels.
    kernel_size: depthwise kernel edge length.
    spatial_dims: 2 or 3.
    mode: `"same"`, `"down"` or `"up"`.
    dtype: computation dtype; parameters are float32.
  """

  features: int
  expansion: int = 4
  kernel_size: int = 3
  spatial_dims: int = 2
  mode: str = "same"
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """`f[B, *S, C]` -> `f[B, *S', features]` (`S'` as `DepthwiseConv`)."""
    del train  # Group norm is stateless.
    d, c = self.spatial_dims, x.shape[-1]
    x = x.astype(self.dtype)
    y = DepthwiseConv(
      self.kernel_size,
      spatial_dims=d,
      mode=self.mode,
      dtype=self.dtype,
      name="depthwise",
    )(x)
    # One group per channel (the authors' nn.GroupNorm(C, C)).
    y = layers.make_norm(
      "group", train=False, dtype=self.dtype, num_groups=c, name="norm"
    )(y)
    y = _pointwise(self.expansion * c, self.dtype, "expand")(y)
    y = _gelu(_store_cotangent(y))
    y = _pointwise(self.features, self.dtype, "compress")(y)
    if self.mode == "same":
      return y + x
    shortcut = _pointwise(self.features, self.dtype, "shortcut")
    if self.mode == "down":
      return y + shortcut(x[(slice(None),) + (slice(None, None, 2),) * d])
    return y + _scatter_odd(shortcut(x), d)


class MedNeXt(nn.Module):
  """MedNeXt returning per-voxel class logits.

  See the module docstring for the architecture and sizes. Parameter counts
  (1 input channel, 2 classes, with the deep-supervision heads, tests):

  | size | kernel 3, 3-D | kernel 5, 3-D | kernel 3, 2-D | paper (k3) |
  | S    |     5,552,842 |     5,982,474 |     5,473,930 | 5.6 M      |
  | B    |    10,528,234 |    10,957,866 |    10,449,322 | 10.5 M     |
  | M    |    17,550,890 |    18,262,762 |    17,420,138 | 17.6 M     |
  | L    |    61,781,194 |    62,994,826 |    61,558,282 | 61.8 M     |

  MONAI's `create_mednext` gives the same for S and 15,456 (B, M) or
  52,512 (L) fewer in 3-D with kernel 3: its first two down blocks expand
  by the ratio of the level they leave (see the module docstring).

  Example:

    >>> model = MedNeXt(num_classes=2, base_features=4, expansion=(2,) * 5,
    ...                 blocks=(1,) * 5)
    >>> x = jnp.zeros((1, 16, 16, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (1, 16, 16, 2)

  Attributes:
    num_classes: number of output channels (logits).
    spatial_dims: 2 or 3.
    size: `"S"`, `"B"`, `"M"` or `"L"` (`SIZES`); fills in `expansion` and
      `blocks` where they are `None`.
    kernel_size: depthwise kernel edge length, 3 or 5 in the paper (any odd
      size works).
    base_features: channels at full resolution (paper: 32), doubling per
      level.
    expansion: `2L - 1` expansion ratios (encoder levels, bottleneck,
      decoder levels from the coarsest), `None`: the size's.
    blocks: `2L - 1` block counts in the same order; its length sets the
      number of levels `L`. Spatial sizes must be multiples of `2^(L-1)`.
    in_channels: if set, the number of input channels is checked.
    dtype: computation dtype; parameters and logits are float32.
    deep_supervision: add auxiliary heads and sow their logits.
    pad_input: zero-pad inputs to multiples of `2^(L-1)` and crop back.
    remat: rematerialise every block (`flax.linen.remat`).
    partition: mesh axis names for the leading axes of the input and of
      every block's output (see `UNet.partition`).
  """

  num_classes: int
  spatial_dims: int = 2
  size: str = "S"
  kernel_size: int = 3
  base_features: int = 32
  expansion: Sequence[int] | None = None
  blocks: Sequence[int] | None = None
  in_channels: int | None = None
  dtype: jax.typing.DTypeLike = jnp.float32
  deep_supervision: bool = False
  pad_input: bool = False
  remat: bool = False
  partition: tuple[str | None, ...] | None = None

  def __post_init__(self):
    layers.check_spatial_dims(self.spatial_dims)
    if self.size not in SIZES:
      raise ValueError(
        f"Unknown size {self.size!r}; expected one of {sorted(SIZES)}."
      )
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
    if self.kernel_size % 2 != 1:
      raise ValueError(f"kernel_size must be odd, got {self.kernel_size}.")
    expansion, blocks = self.resolved()
    if len(blocks) % 2 != 1 or len(expansion) != len(blocks):
      raise ValueError(
        "expansion and blocks need the same odd number (2L - 1) of entries, "
        f"got {len(expansion)} and {len(blocks)}."
      )
    if self.deep_supervision and len(blocks) < 3:
      raise ValueError("deep_supervision needs at least 2 levels.")
    super().__post_init__()

  def resolved(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`(expansion, blocks)`, the size's where not given."""
    expansion, blocks = SIZES[self.size]
    if self.expansion is not None:
      expansion = tuple(self.expansion)
    if self.blocks is not None:
      blocks = tuple(self.blocks)
    return tuple(expansion), tuple(blocks)

  def input_multiple(self) -> int:
    """Every spatial input size must be a multiple of this."""
    return 2 ** (len(self.resolved()[1]) // 2)

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Computes logits.

    Args:
      x: `f32[B, H, W, C]` (2-D) or `f32[B, D, H, W, C]` (3-D) image.
      train: training mode (nothing in MedNeXt depends on it).

    Returns:
      `f32[B, *S, num_classes]` logits with the input's spatial size `S`.

    Raises:
      ValueError: if the input rank or channels do not fit, or the spatial
        sizes are not multiples of `2^(L-1)` and `pad_input` is False.
    """
    d = self.spatial_dims
    expansion, blocks = self.resolved()
    levels = len(blocks) // 2 + 1
    x, spatial = layers.prepare_input(
      x,
      model="MedNeXt",
      spatial_dims=d,
      in_channels=self.in_channels,
      num_downsamplings=levels - 1,
      pad_input=self.pad_input,
    )
    x = sharding.constrain(x.astype(self.dtype), self.partition)

    def run(features: int, ratio: int, mode: str, name: str, x: jax.Array):
      block = MedNeXtBlock(
        features,
        expansion=ratio,
        kernel_size=self.kernel_size,
        spatial_dims=d,
        mode=mode,
        dtype=self.dtype,
        name=name,
      )
      return layers.apply_block(
        block, x, train=train, remat=self.remat, partition=self.partition
      )

    def width(level: int) -> int:
      return self.base_features * 2**level

    x = _pointwise(self.base_features, self.dtype, "stem")(x)
    skips = []
    for level in range(levels):
      if level > 0:  # Into `level`, expanding by that level's ratio.
        x = run(width(level), expansion[level], "down", f"down_{level}", x)
      for b in range(blocks[level]):
        x = run(width(level), expansion[level], "same", f"enc_{level}_{b}", x)
      skips.append(x)

    want_aux = unet.wants_aux(self, self.deep_supervision)
    aux = {}
    if want_aux:
      aux[levels - 1] = unet.class_head(
        x, self.num_classes, d, f"aux_head_{levels - 1}"
      )
    for level in reversed(range(levels - 1)):
      i = 2 * levels - 2 - level  # Index of this decoder level's entries.
      x = run(width(level), expansion[i], "up", f"up_{level}", x)
      x = x + skips[level]
      for b in range(blocks[i]):
        x = run(width(level), expansion[i], "same", f"dec_{level}_{b}", x)
      if want_aux and level > 0:
        aux[level] = unet.class_head(
          x, self.num_classes, d, f"aux_head_{level}"
        )

    logits = unet.class_head(x, self.num_classes, d, "head")
    if self.pad_input:
      logits = layers.crop_spatial(logits, spatial)
    unet.sow_aux(self, aux, spatial, self.pad_input)
    return logits
