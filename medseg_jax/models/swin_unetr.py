"""SwinUNETR (Hatamizadeh et al., 2022): a Swin transformer encoder with a
convolutional U-Net decoder.

References:

* A. Hatamizadeh, V. Nath, Y. Tang, D. Yang, H. R. Roth, D. Xu. "Swin
  UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors in MRI
  Images". BrainLes (MICCAI workshop) 2022. https://arxiv.org/abs/2201.01266
* Y. Tang, D. Yang, W. Li, H. R. Roth, B. Landman, D. Xu, V. Nath,
  A. Hatamizadeh. "Self-Supervised Pre-Training of Swin Transformers for 3D
  Medical Image Analysis". CVPR 2022. https://arxiv.org/abs/2111.14791
  (the BTCV configuration; Table S.3 gives about 62M parameters).
* Z. Liu et al. "Swin Transformer: Hierarchical Vision Transformer using
  Shifted Windows". ICCV 2021. https://arxiv.org/abs/2103.14030
* The reference implementation: MONAI `monai/networks/nets/swin_unetr.py`.

Encoder. A `patch_size^d` stride-`patch_size` convolution embeds the image
into `feature_size` channels at 1/patch_size resolution. `len(depths)`
stages follow; stage `i` has `depths[i]` Swin blocks of width `feature_size
* 2^i` and `num_heads[i]` heads, then patch merging (the 2^d neighbours
concatenated, layer-normed and mapped linearly, without bias, to twice the
width at half the resolution). A Swin block is `x + W-MSA(LN(x))`, `x +
MLP(LN(x))` where the attention is restricted to non-overlapping
`window_size^d` windows and has a learned relative position bias; every
second block shifts the windows by `window_size // 2` (a cyclic roll of the
map) and masks attention between tokens that the roll brought together from
opposite borders (`shifted_window_mask`). Where a stage's map is no larger
than the window along an axis, the window shrinks to the map and that axis
is not shifted; maps that are not multiples of the window are zero-padded
at the end, as in MONAI. The embedding and every stage output are layer
normalised without learned parameters (MONAI's `normalize=True`).

Decoder (MONAI's layout, 4 stages shown; `f = feature_size`):

  input             -> res block (f)                  skip, 1/1
  embedding (f)     -> res block (f)                  skip, 1/2
  stage 1 out (2f)  -> res block (2f)                 skip, 1/4
  stage 2 out (4f)  -> res block (4f)                 skip, 1/8
  stage 3 out (8f)                                    skip, 1/16 (no block)
  stage 4 out (16f) -> res block (16f)                bottleneck, 1/32
  then up blocks (2^d transposed conv, concatenation with the skip, res
  block) to 8f, 4f, 2f, f at 1/16 ... 1/2, a last up block by `patch_size`
  to f channels at full resolution, and a 1^d convolution to the logits.

Res blocks are MONAI's `UnetResBlock` (`unetr.res_block`).

Configuration (defaults): 3-D, `patch_size=2`, `window_size=7`,
`depths=(2, 2, 2, 2)`, `num_heads=(3, 6, 12, 24)`, `feature_size=48` (the
papers' model), MLP ratio 4, query/key/value bias, instance norm.
`feature_size=24` is MONAI's default, smaller option. Spatial sizes must be
multiples of `patch_size * 2^len(depths)` (32 by default). Parameter counts
(1 input channel, 14 classes, checked in the tests): 62,196,608 for
`feature_size=48` (Tang et al.: "62M"; commonly quoted 62.2M; MONAI's
model has 62,187,296, the difference being the 9,312 scales and shifts of
our instance norms) and 15,707,960 for `feature_size=24` (MONAI:
15,703,304).

Deliberate differences from MONAI:

* Patch merging concatenates the 2^d distinct neighbours (MONAI's legacy
  3-D "merging" takes two of them twice); same parameters.
* A window shrunk to a small map uses the relative position bias entries of
  its true offsets (MONAI indexes the full window's table with the first
  `n` rows of its index).
* Instance norm has a learned scale and shift (`layers.make_norm`); MONAI's
  has none. No dropout or stochastic depth.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medseg_jax import sharding
from medseg_jax.models import layers
from medseg_jax.models import unetr


def stage_windows(
  size: Sequence[int], window_size: int, shifted: bool
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The window and shift a block uses on a map of spatial size `size`.

  Along an axis no longer than `window_size` the window is the whole axis
  and there is no shift; elsewhere the window is `window_size` and the shift
  `window_size // 2` (if `shifted`) or 0.

  Returns:
    `(window, shift)`, one entry per spatial axis.
  """
  window, shift = [], []
  for s in size:
    if s <= window_size:
      window.append(s)
      shift.append(0)
    else:
      window.append(window_size)
      shift.append(window_size // 2 if shifted else 0)
  return tuple(window), tuple(shift)


def window_partition(x: jax.Array, window: Sequence[int]) -> jax.Array:
  """`f[B, *S, C] -> f[B, nW, T, C]`, windows in raster order.

  `S` must be multiples of `window`; `nW = prod(S / window)` and `T =
  prod(window)`, tokens in raster order within each window.
  """
  b, *spatial, c = x.shape
  d = len(spatial)
  shape = [b]
  for s, w in zip(spatial, window, strict=True):
    shape += [s // w, w]
  x = x.reshape(*shape, c)
  order = [0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1]
  # Array methods, so that numpy arrays (the masks) stay numpy.
  x = x.transpose(order)
  return x.reshape(b, -1, int(np.prod(window)), c)


def window_reverse(
  windows: jax.Array, window: Sequence[int], spatial: Sequence[int]
) -> jax.Array:
  """The inverse of `window_partition`: `f[B, nW, T, C] -> f[B, *S, C]`."""
  b, c, d = windows.shape[0], windows.shape[-1], len(spatial)
  grid = [s // w for s, w in zip(spatial, window, strict=True)]
  x = windows.reshape(b, *grid, *window, c)
  order = [0]
  for axis in range(d):
    order += [1 + axis, 1 + d + axis]
  x = jnp.transpose(x, (*order, 2 * d + 1))
  return x.reshape(b, *spatial, c)


def shifted_window_mask(
  size: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> np.ndarray:
  """Which tokens of a shifted window may attend to which.

  The map (spatial size `size`, multiples of `window`) is rolled by
  `-shift` and cut into windows. Along each axis the rolled map falls into
  the regions `[0, S - w)`, `[S - w, S - s)` and `[S - s, S)` (Swin's
  `img_mask`); the last holds the tokens the roll wrapped around from the
  start. Tokens in different regions must not attend to each other.

  Args:
    size: spatial size of the (padded) map.
    window: window size per axis.
    shift: shift per axis (0: no shift along that axis).

  Returns:
    `bool[nW, T, T]`, True where token `t` of window `w` may attend to
    token `u`; windows and tokens in the order of `window_partition`.
  """
  region = np.zeros(tuple(size), np.int64)
  for axis, (s, w, h) in enumerate(zip(size, window, shift, strict=True)):
    coord = np.arange(s)
    ids = np.where(coord < s - w, 0, np.where(coord < s - h, 1, 2))
    ids = ids if h else np.zeros_like(ids)
    shape = [1] * len(size)
    shape[axis] = s
    region = region * 3 + ids.reshape(shape)
  windows = window_partition(region[None, ..., None], window)[0, ..., 0]
  return windows[:, :, None] == windows[:, None, :]


def relative_position_index(
  window: Sequence[int], table_window: int
) -> np.ndarray:
  """Row of the bias table for every pair of tokens in a window.

  The table has `(2 * table_window - 1)^d` rows, one per offset between two
  tokens of a full `table_window^d` window (each component in
  `[-(table_window - 1), table_window - 1]`, raster order). `window` may be
  smaller than `table_window` along some axes.

  Returns:
    `int[T, T]` with `T = prod(window)`.
  """
  coords = np.stack(
    np.meshgrid(*[np.arange(w) for w in window], indexing="ij"), -1
  ).reshape(-1, len(window))
  offsets = coords[:, None, :] - coords[None, :, :] + table_window - 1
  span = 2 * table_window - 1
  index = np.zeros(offsets.shape[:2], np.int64)
  for axis in range(len(window)):
    index = index * span + offsets[..., axis]
  return index


class WindowAttention(nn.Module):
  """Multi-head self-attention within windows, with relative position bias.

  Attributes:
    num_heads: attention heads; must divide the token width.
    window_size: the configured window edge (sizes the bias table).
    qkv_bias: whether the query/key/value projection has a bias.
    dtype: computation dtype; parameters are float32.
  """

  num_heads: int
  window_size: int
  qkv_bias: bool = True
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self,
    windows: jax.Array,
    window: Sequence[int],
    mask: np.ndarray | None,
  ) -> jax.Array:
    """Attends within each window.

    Args:
      windows: `f[B, nW, T, C]` tokens per window.
      window: the window size per axis (`prod(window) == T`).
      mask: `bool[nW, T, T]` (True: may attend) or None.

    Returns:
      `f[B, nW, T, C]`.
    """
    width = windows.shape[-1]
    d = len(window)
    table = self.param(
      "relative_position_bias",
      nn.initializers.truncated_normal(0.02),
      ((2 * self.window_size - 1) ** d, self.num_heads),
    )
    index = relative_position_index(window, self.window_size)
    # [T, T, heads] -> [1, heads, T, T].
    bias = jnp.transpose(table[index], (2, 0, 1))[None].astype(self.dtype)
    qkv = nn.Dense(
      3 * width,
      use_bias=self.qkv_bias,
      dtype=self.dtype,
      kernel_init=unetr.dense_init,
      name="qkv",
    )(windows)
    q, k, v = unetr.split_heads(qkv, self.num_heads)  # [B, nW, T, h, c].
    if mask is None:
      b, nw = q.shape[:2]
      flat = [a.reshape(b * nw, *a.shape[2:]) for a in (q, k, v)]
      y = jax.nn.dot_product_attention(*flat, bias=bias)
    else:
      # Windows play the batch role of dot_product_attention; the mask
      # differs per window and is shared by the images of the batch.
      allowed = jnp.asarray(mask)[:, None]  # [nW, 1, T, T].

      def attend(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=allowed)

      y = jax.vmap(attend)(q, k, v)
    y = y.reshape(windows.shape)
    return nn.Dense(
      width, dtype=self.dtype, kernel_init=unetr.dense_init, name="proj"
    )(y)


class SwinBlock(nn.Module):
  """Swin transformer block on a map: (shifted) window attention, MLP.

  Attributes:
    num_heads: attention heads.
    window_size: configured window edge.
    shifted: shift the windows by `window_size // 2` (odd blocks).
    mlp_ratio: MLP width over token width.
    qkv_bias: whether the query/key/value projection has a bias.
    dtype: computation dtype; parameters are float32.
  """

  num_heads: int
  window_size: int
  shifted: bool
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """`f[B, *S, C] -> f[B, *S, C]`; `train` is unused (no dropout)."""
    del train
    spatial = x.shape[1:-1]
    d = len(spatial)
    window, shift = stage_windows(spatial, self.window_size, self.shifted)
    y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm1")(x)
    padded = tuple(-(-s // w) * w for s, w in zip(spatial, window, strict=True))
    pads = [(0, p - s) for s, p in zip(spatial, padded, strict=True)]
    y = jnp.pad(y, [(0, 0), *pads, (0, 0)])
    axes = tuple(range(1, d + 1))
    mask = None
    if any(shift):
      y = jnp.roll(y, [-s for s in shift], axes)
      mask = shifted_window_mask(padded, window, shift)
    windows = window_partition(y, window)
    windows = WindowAttention(
      self.num_heads,
      self.window_size,
      qkv_bias=self.qkv_bias,
      dtype=self.dtype,
      name="attention",
    )(windows, window, mask)
    y = window_reverse(windows, window, padded)
    if any(shift):
      y = jnp.roll(y, shift, axes)
    y = layers.crop_spatial(y, spatial)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm2")(x)
    hidden = int(x.shape[-1] * self.mlp_ratio)
    return x + unetr.Mlp(hidden, dtype=self.dtype, name="mlp")(y)


class PatchMerging(nn.Module):
  """2^d neighbours -> one token: concatenate, layer norm, linear to 2C.

  Attributes:
    dtype: computation dtype; parameters are float32.
  """

  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """`f[B, *S, C] -> f[B, *S/2, 2C]` (S even)."""
    del train
    b, *spatial, c = x.shape
    d = len(spatial)
    shape = [b]
    for s in spatial:
      shape += [s // 2, 2]
    x = x.reshape(*shape, c)
    # [b, S0/2, 2, S1/2, 2, ..., c] -> [b, S0/2, S1/2, ..., 2, 2, ..., c].
    order = [0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1]
    x = jnp.transpose(x, order).reshape(b, *(s // 2 for s in spatial), -1)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
    return nn.Dense(
      2 * c,
      use_bias=False,
      dtype=self.dtype,
      kernel_init=unetr.dense_init,
      name="reduction",
    )(x)


def plain_layer_norm(x: jax.Array) -> jax.Array:
  """Layer norm over channels without learned scale or shift."""
  return nn.LayerNorm(epsilon=1e-5, use_scale=False, use_bias=False)(x)


class SwinUNETR(nn.Module):
  """SwinUNETR returning per-voxel class logits; see the module docstring.

  Parameters (`params`): `patch_embedding`, `stage_{i}_block_{j}` (Swin
  blocks), `stage_{i}_merging`, `encoder_{k}` (res blocks on the skips;
  `encoder_0` on the input), `bottleneck`, `decoder_{k}` (`unetr.UpBlock`,
  `k = len(depths) .. 0`), `head` (1^d convolution, float32).

  Example:

    >>> model = SwinUNETR(num_classes=3, spatial_dims=2, feature_size=12,
    ...                   depths=(2, 2), num_heads=(1, 2), window_size=4)
    >>> x = jnp.zeros((1, 32, 32, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (1, 32, 32, 3)

  Attributes:
    num_classes: number of output channels (logits).
    spatial_dims: 2 (`[B, H, W, C]`) or 3 (`[B, D, H, W, C]`).
    in_channels: if set, the number of input channels is checked.
    dtype: computation dtype (e.g. `jnp.bfloat16`); parameters and logits
      are float32.
    feature_size: width of the embedding; stage `i` has `feature_size *
      2^i` channels, which `num_heads[i]` must divide.
    depths: Swin blocks per stage.
    num_heads: attention heads per stage.
    window_size: window edge.
    patch_size: patch edge of the embedding, a power of 2.
    mlp_ratio: MLP width over token width.
    qkv_bias: whether the query/key/value projections have a bias.
    norm: normalisation of the convolutional blocks (`layers.NORMS`).
    normalize: layer-normalise (without parameters) the embedding and every
      stage output before the decoder uses them (MONAI's default).
    remat: rematerialise every Swin and convolutional block.
    partition: mesh axis names for the leading axes of the input and of
      every block's output (all are `[B, *S, C]` maps), e.g. `("data",
      "spatial")`. See `medseg_jax.sharding.constrain`.
  """

  num_classes: int
  spatial_dims: int = 3
  in_channels: int | None = None
  dtype: jax.typing.DTypeLike = jnp.float32
  feature_size: int = 48
  depths: Sequence[int] = (2, 2, 2, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  patch_size: int = 2
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  norm: str = "instance"
  normalize: bool = True
  remat: bool = False
  partition: tuple[str | None, ...] | None = None

  def __post_init__(self):
    layers.check_spatial_dims(self.spatial_dims)
    layers.check_norm(self.norm)
    unetr.log2_exact(self.patch_size, "patch_size")
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
    if not self.depths or min(self.depths) < 1:
      raise ValueError(
        f"depths needs at least one stage of >= 1 blocks, got {self.depths}."
      )
    if len(self.num_heads) != len(self.depths):
      raise ValueError(
        f"num_heads {tuple(self.num_heads)} needs one entry per stage of "
        f"depths {tuple(self.depths)}."
      )
    for i, heads in enumerate(self.num_heads):
      if (self.feature_size * 2**i) % heads:
        raise ValueError(
          f"num_heads[{i}]={heads} must divide stage {i}'s width "
          f"feature_size * 2^{i} = {self.feature_size * 2**i}."
        )
    if self.window_size < 1:
      raise ValueError(f"window_size must be >= 1, got {self.window_size}.")
    super().__post_init__()

  def input_multiple(self) -> int:
    """Spatial sizes must be multiples of this."""
    return self.patch_size * 2 ** len(self.depths)

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Computes logits.

    Args:
      x: `f32[B, H, W, C]` (2-D) or `f32[B, D, H, W, C]` (3-D) image whose
        spatial sizes are multiples of `patch_size * 2^len(depths)`.
      train: training mode (batch norm, if chosen, only).

    Returns:
      `f32[B, *S, num_classes]` logits.

    Raises:
      ValueError: for a wrong rank or channel count, or spatial sizes that
        are not multiples of `patch_size * 2^len(depths)`.
    """
    d, f = self.spatial_dims, self.feature_size
    x = jnp.asarray(x)
    layers.check_image(
      x, model="SwinUNETR", spatial_dims=d, in_channels=self.in_channels
    )
    unetr.check_multiple(
      x,
      model="SwinUNETR",
      field=(
        f"patch_size={self.patch_size} and {len(self.depths)} stages "
        f"(patch_size * 2^{len(self.depths)})"
      ),
      multiple=self.input_multiple(),
    )
    x = sharding.constrain(x.astype(self.dtype), self.partition)

    def apply(module, y):
      return layers.apply_block(
        module, y, train=train, remat=self.remat, partition=self.partition
      )

    def res_block(features, name):
      return unetr.res_block(
        features, spatial_dims=d, norm=self.norm, dtype=self.dtype, name=name
      )

    def out(y):
      return plain_layer_norm(y) if self.normalize else y

    # --- Swin encoder ---------------------------------------------------
    y = layers.Conv(
      f,
      self.patch_size,
      spatial_dims=d,
      strides=self.patch_size,
      padding="VALID",
      dtype=self.dtype,
      name="patch_embedding",
    )(x)
    y = sharding.constrain(y, self.partition)
    hidden = [out(y)]
    for i, (depth, heads) in enumerate(
      zip(self.depths, self.num_heads, strict=True)
    ):
      for j in range(depth):
        block = SwinBlock(
          heads,
          self.window_size,
          shifted=j % 2 == 1,
          mlp_ratio=self.mlp_ratio,
          qkv_bias=self.qkv_bias,
          dtype=self.dtype,
          name=f"stage_{i}_block_{j}",
        )
        y = apply(block, y)
      y = apply(PatchMerging(dtype=self.dtype, name=f"stage_{i}_merging"), y)
      hidden.append(out(y))

    # --- Convolutional skips and decoder -------------------------------
    num_stages = len(self.depths)
    skips = [apply(res_block(f, "encoder_0"), x)]
    for k in range(num_stages - 1):
      skips.append(apply(res_block(f * 2**k, f"encoder_{k + 1}"), hidden[k]))
    skips.append(hidden[num_stages - 1])  # MONAI: no block on this one.
    y = apply(res_block(f * 2**num_stages, "bottleneck"), hidden[num_stages])
    return unetr.decode(
      self,
      y,
      skips,
      features=[f * 2 ** max(k - 1, 0) for k in range(num_stages + 1)],
      factors=[self.patch_size] + [2] * num_stages,
      train=train,
    )
