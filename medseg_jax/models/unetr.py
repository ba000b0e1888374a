"""UNETR (Hatamizadeh et al., 2022): a ViT encoder with a U-Net decoder.

Reference: A. Hatamizadeh, Y. Tang, V. Nath, D. Yang, A. Myronenko,
B. Landman, H. R. Roth, D. Xu. "UNETR: Transformers for 3D Medical Image
Segmentation". WACV 2022. https://arxiv.org/abs/2103.10504 (the reference
implementation is MONAI's `monai/networks/nets/unetr.py`).

The image is cut into non-overlapping `patch_size^d` patches, each embedded
linearly (a `patch_size^d` convolution with stride `patch_size`) and given a
learned position embedding; a plain ViT (pre-norm transformer blocks of
global multi-head self-attention and a GELU MLP) encodes the token sequence.
With `patch_size = 2^n`, the token grid is at 1/2^n of the input, and the
decoder climbs `n` resolution levels. Level `k` (`k = 1, ..., n - 1`, at
1/2^k resolution, `feature_size * 2^k` channels) takes the tokens after
transformer layer `k * num_layers // n` (for the paper's 16^3 patches and 12
layers: layers 3, 6 and 9) and brings them to its resolution with a chain of
`n - k` 2^d stride-2 transposed convolutions (each after the first followed
by a residual block, the paper's blue "deconv, conv" boxes). The bottleneck
is the final (layer-normed) token grid. Each decoder step upsamples by a
2^d transposed convolution, concatenates the level's features and applies
a residual block; level 0 is a residual block on the input image itself. A
1^d convolution gives the logits.

Paper configuration (the defaults): 3-D, patch 16, hidden size 768, MLP
3072, 12 layers, 12 heads, `feature_size=16`, instance norm, residual
blocks, no query/key/value bias. With 1 input channel, 14 classes (BTCV)
and a 96^3 input this has 92,786,094 parameters (2,048 of them the scales
and shifts of instance norms that MONAI's model lacks); the paper reports
92.58M (Table 5), 0.2 % fewer.

Deliberate differences from the reference implementation:

* The skips come from the outputs of layers 3, 6, 9 (the paper's z3, z6,
  z9); MONAI takes indices 3, 6, 9 of its list of block outputs, i.e.
  layers 4, 7, 10. The parameter count is the same.
* Instance norm has a learned scale and shift (`layers.make_norm`); MONAI's
  has none. The residual blocks are `layers.ResidualBlock` with leaky ReLUs
  (slope 0.01), as MONAI's `UnetResBlock`.
* The position embedding is a parameter on the token grid of the input seen
  at `init`; inputs with another grid get it resized linearly (as ViTs are
  fine-tuned at other resolutions), so whole-image and sliding-window
  inference both work. No dropout.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax import sharding
from medseg_jax.models import layers

# MONAI's UnetResBlock: leaky ReLU, slope 0.01.
leaky_relu = functools.partial(nn.leaky_relu, negative_slope=0.01)

# Initialisers of the transformer's linear layers and embeddings (ViT).
dense_init = nn.initializers.xavier_uniform()
embedding_init = nn.initializers.truncated_normal(0.02)


def check_multiple(
  x: jax.Array, *, model: str, field: str, multiple: int
) -> None:
  """Raises unless every spatial size of `x` is a multiple of `multiple`.

  Args:
    x: `f[B, *S, C]`.
    model: model name used in the message.
    field: the configuration the multiple comes from, e.g.
      `"patch_size=16"`.
    multiple: the required multiple.

  Raises:
    ValueError: naming `field`, the multiple and the nearest padded size.
  """
  spatial = tuple(x.shape[1:-1])
  if any(s % multiple for s in spatial):
    raise ValueError(
      f"{model} with {field} needs spatial sizes that are multiples of "
      f"{multiple}; got {spatial} in shape {tuple(x.shape)}. Crop or pad, "
      f"e.g. to {layers.padded_size(spatial, multiple)}."
    )


def log2_exact(value: int, name: str) -> int:
  """`n` with `2^n == value`, `n >= 1`; raises ValueError naming `name`."""
  n = int(value).bit_length() - 1
  if value < 2 or 2**n != value:
    raise ValueError(f"{name} must be a power of 2 >= 2, got {value}.")
  return n


def res_block(
  features: int,
  *,
  spatial_dims: int,
  norm: str,
  dtype: jax.typing.DTypeLike,
  name: str,
) -> layers.ResidualBlock:
  """MONAI's `UnetResBlock`: `layers.ResidualBlock`, 3^d, leaky ReLU."""
  return layers.ResidualBlock(
    features,
    spatial_dims=spatial_dims,
    norm=norm,
    dtype=dtype,
    activation=leaky_relu,
    name=name,
  )


class UpBlock(nn.Module):
  """MONAI's `UnetrUpBlock`: upsample, concatenate the skip, `res_block`.

  A transposed convolution without bias (kernel and stride `factor`) maps
  `x` to `features` channels at the skip's resolution; the result and the
  skip, concatenated in that order, go through a `res_block`.

  Attributes:
    features: output channels (also those of the upsampled `x`).
    spatial_dims: 2 or 3.
    norm: one of `layers.NORMS`.
    factor: the upsampling factor.
    dtype: computation dtype; parameters are float32.
    remat: rematerialise the residual block.
    partition: mesh axes for the leading axes of the outputs.
  """

  features: int
  spatial_dims: int = 3
  norm: str = "instance"
  factor: int = 2
  dtype: jax.typing.DTypeLike = jnp.float32
  remat: bool = False
  partition: tuple[str | None, ...] | None = None

  @nn.compact
  def __call__(
    self, x: jax.Array, skip: jax.Array, *, train: bool
  ) -> jax.Array:
    """`f[B, *S, C_in]`, `f[B, *factor*S, C_skip] -> f[B, *factor*S, F]`."""
    up = layers.UpConvTranspose(
      self.features,
      spatial_dims=self.spatial_dims,
      use_bias=False,
      factor=self.factor,
      dtype=self.dtype,
      name="upsample",
    )(x)
    x = jnp.concatenate([up, skip.astype(self.dtype)], axis=-1)
    block = res_block(
      self.features,
      spatial_dims=self.spatial_dims,
      norm=self.norm,
      dtype=self.dtype,
      name="block",
    )
    return layers.apply_block(
      block, x, train=train, remat=self.remat, partition=self.partition
    )


def decode(
  model: nn.Module,
  y: jax.Array,
  skips: Sequence[jax.Array],
  *,
  features: Sequence[int],
  factors: Sequence[int],
  train: bool,
) -> jax.Array:
  """The UNETR/SwinUNETR decoder and head, built as children of `model`.

  From the coarsest level down, `decoder_{k}` (an `UpBlock` with
  `features[k]` channels, upsampling by `factors[k]`) joins `y` and
  `skips[k]`; a float32 1^d convolution (`head`) gives the logits. Call it
  from `model`'s compact `__call__`; `model` supplies `num_classes`,
  `spatial_dims`, `norm`, `dtype`, `remat` and `partition`.

  Args:
    model: the calling module.
    y: `f[B, *S_n, C]`, the bottleneck.
    skips: `f[B, *S_k, C_k]` per level `k`, finest first.
    features: output channels per level.
    factors: `S_k = factors[k] * S_{k+1}` (with `S_{len(skips)}` that of
      `y`).
    train: training mode.

  Returns:
    `f32[B, *S_0, num_classes]` logits.
  """
  for k in reversed(range(len(skips))):
    y = UpBlock(
      features[k],
      spatial_dims=model.spatial_dims,
      norm=model.norm,
      factor=factors[k],
      dtype=model.dtype,
      remat=model.remat,
      partition=model.partition,
      name=f"decoder_{k}",
    )(y, skips[k], train=train)
  return nn.Conv(
    model.num_classes,
    (1,) * model.spatial_dims,
    kernel_init=layers.conv_init,
    dtype=jnp.float32,
    name="head",
  )(y.astype(jnp.float32))


class Mlp(nn.Module):
  """Transformer MLP: dense, exact GELU, dense.

  Attributes:
    hidden: width of the inner layer.
    dtype: computation dtype; parameters are float32.
  """

  hidden: int
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`f[..., C] -> f[..., C]`."""
    dense = functools.partial(
      nn.Dense, dtype=self.dtype, kernel_init=dense_init
    )
    y = nn.gelu(dense(self.hidden, name="fc1")(x), approximate=False)
    return dense(x.shape[-1], name="fc2")(y)


def split_heads(
  qkv: jax.Array, num_heads: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`f[..., T, 3C]` -> q, k, v, each `f[..., T, num_heads, C / heads]`."""
  *lead, width = qkv.shape
  qkv = qkv.reshape(*lead, 3, num_heads, width // (3 * num_heads))
  return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]


class TransformerBlock(nn.Module):
  """Pre-norm ViT block: `x + MHSA(LN(x))`, then `x + MLP(LN(x))`.

  Attention is global over the token axis, computed by
  `jax.nn.dot_product_attention` (scaled by `1 / sqrt(head width)`).

  Attributes:
    num_heads: attention heads; must divide the token width.
    mlp_dim: width of the MLP's inner layer.
    qkv_bias: whether the query/key/value projection has a bias.
    dtype: computation dtype; parameters are float32.
  """

  num_heads: int
  mlp_dim: int
  qkv_bias: bool = False
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """`f[B, N, C] -> f[B, N, C]`; `train` is unused (no dropout)."""
    del train
    width = x.shape[-1]
    y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm1")(x)
    qkv = nn.Dense(
      3 * width,
      use_bias=self.qkv_bias,
      dtype=self.dtype,
      kernel_init=dense_init,
      name="qkv",
    )(y)
    q, k, v = split_heads(qkv, self.num_heads)
    y = jax.nn.dot_product_attention(q, k, v).reshape(x.shape)
    y = nn.Dense(width, dtype=self.dtype, kernel_init=dense_init, name="proj")(
      y
    )
    x = x + y
    y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm2")(x)
    return x + Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(y)


class UNETR(nn.Module):
  """UNETR returning per-voxel class logits; see the module docstring.

  Parameters (`params`):

    patch_embedding/{kernel, bias}     the patch_size^d stride-patch_size
                                       convolution to hidden_size channels
    position_embedding: f32[*G, hidden_size]   on the init input's grid G
    layer_{i}/...                      transformer blocks, i = 0..L-1
    norm/...                           the final layer norm
    encoder_0/...                      residual block on the input
    encoder_{k}/upsample_{j}, encoder_{k}/block_{j}   the deconv chains
    decoder_{k}/...                    `UpBlock`s, k = n-1..0
    head/{kernel, bias}                1^d convolution, float32

  Example:

    >>> model = UNETR(num_classes=3, spatial_dims=2, patch_size=4,
    ...               hidden_size=32, mlp_dim=64, num_layers=4, num_heads=2,
    ...               feature_size=8)
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
    patch_size: edge of the cubic/square patches, a power of 2; spatial
      sizes must be multiples of it.
    hidden_size: token width.
    mlp_dim: width of the transformer MLPs.
    num_layers: transformer blocks.
    num_heads: attention heads; must divide `hidden_size`.
    feature_size: channels of the full-resolution decoder level; level `k`
      has `feature_size * 2^k`.
    norm: normalisation of the convolutional blocks (`layers.NORMS`).
    qkv_bias: whether the query/key/value projections have a bias.
    remat: rematerialise every transformer and convolutional block.
    partition: mesh axis names for the leading axes of the input and of the
      convolutional blocks' outputs (`[B, *S, C]` maps), e.g. `("data",
      "spatial")`; the token sequence is left to XLA's partitioner. See
      `medseg_jax.sharding.constrain`.
  """

  num_classes: int
  spatial_dims: int = 3
  in_channels: int | None = None
  dtype: jax.typing.DTypeLike = jnp.float32
  patch_size: int = 16
  hidden_size: int = 768
  mlp_dim: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  feature_size: int = 16
  norm: str = "instance"
  qkv_bias: bool = False
  remat: bool = False
  partition: tuple[str | None, ...] | None = None

  def __post_init__(self):
    layers.check_spatial_dims(self.spatial_dims)
    layers.check_norm(self.norm)
    log2_exact(self.patch_size, "patch_size")
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
    if self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {self.num_layers}.")
    if self.hidden_size % self.num_heads:
      raise ValueError(
        f"num_heads={self.num_heads} must divide hidden_size="
        f"{self.hidden_size}."
      )
    super().__post_init__()

  def input_multiple(self) -> int:
    """Spatial sizes must be multiples of this (`patch_size`)."""
    return self.patch_size

  def skip_layers(self) -> tuple[int, ...]:
    """Transformer layers (1-based; 0 = the embedding) feeding levels 1..n-1."""
    n = log2_exact(self.patch_size, "patch_size")
    return tuple(k * self.num_layers // n for k in range(1, n))

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Computes logits.

    Args:
      x: `f32[B, H, W, C]` (2-D) or `f32[B, D, H, W, C]` (3-D) image whose
        spatial sizes are multiples of `patch_size`.
      train: training mode (batch norm, if chosen, only).

    Returns:
      `f32[B, *S, num_classes]` logits.

    Raises:
      ValueError: for a wrong rank or channel count, or spatial sizes that
        are not multiples of `patch_size`.
    """
    d, p = self.spatial_dims, self.patch_size
    n = log2_exact(p, "patch_size")
    x = jnp.asarray(x)
    layers.check_image(
      x, model="UNETR", spatial_dims=d, in_channels=self.in_channels
    )
    check_multiple(x, model="UNETR", field=f"patch_size={p}", multiple=p)
    x = sharding.constrain(x.astype(self.dtype), self.partition)

    def conv_block(module, y):
      return layers.apply_block(
        module, y, train=train, remat=self.remat, partition=self.partition
      )

    # --- ViT encoder ---------------------------------------------------
    tokens = layers.Conv(
      self.hidden_size,
      p,
      spatial_dims=d,
      strides=p,
      padding="VALID",
      dtype=self.dtype,
      name="patch_embedding",
    )(x)
    grid = tokens.shape[1:-1]
    tokens = tokens + self._position_embedding(grid)
    batch = tokens.shape[0]
    tokens = tokens.reshape(batch, -1, self.hidden_size)
    wanted = set(self.skip_layers())
    hidden = {0: tokens} if 0 in wanted else {}
    for i in range(self.num_layers):
      block = TransformerBlock(
        self.num_heads,
        self.mlp_dim,
        qkv_bias=self.qkv_bias,
        dtype=self.dtype,
        name=f"layer_{i}",
      )
      tokens = layers.apply_block(block, tokens, train=train, remat=self.remat)
      if i + 1 in wanted:
        hidden[i + 1] = tokens
    tokens = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(tokens)

    def as_grid(t):
      return t.reshape(batch, *grid, self.hidden_size)

    # --- Encoder levels: deconv chains from the skip layers ------------
    skips = {
      0: conv_block(
        res_block(
          self.feature_size,
          spatial_dims=d,
          norm=self.norm,
          dtype=self.dtype,
          name="encoder_0",
        ),
        x,
      )
    }
    for k, layer in zip(range(1, n), self.skip_layers(), strict=True):
      skips[k] = DeconvChain(
        self.feature_size * 2**k,
        num_steps=n - k,
        spatial_dims=d,
        norm=self.norm,
        dtype=self.dtype,
        remat=self.remat,
        partition=self.partition,
        name=f"encoder_{k}",
      )(as_grid(hidden[layer]), train=train)

    # --- Decoder -------------------------------------------------------
    return decode(
      self,
      as_grid(tokens),
      [skips[k] for k in range(n)],
      features=[self.feature_size * 2**k for k in range(n)],
      factors=[2] * n,
      train=train,
    )

  def _position_embedding(self, grid: Sequence[int]) -> jax.Array:
    """The learned embedding `f[*grid, hidden]`, resized if needed."""
    name = "position_embedding"
    if self.has_variable("params", name):
      # Read, not `self.param`, which insists on the init-time shape.
      table = self.get_variable("params", name)
    else:
      table = self.param(name, embedding_init, (*grid, self.hidden_size))
    if tuple(table.shape[:-1]) != tuple(grid):
      table = jax.image.resize(
        table, (*grid, self.hidden_size), method="linear"
      )
    return table.astype(self.dtype)


class DeconvChain(nn.Module):
  """MONAI's `UnetrPrUpBlock`: `num_steps` 2^d transposed convolutions.

  The first maps to `features` channels; every further one is followed by a
  `res_block`. Transposed convolutions carry no bias.

  Attributes:
    features: output channels.
    num_steps: number of 2x upsamplings.
    spatial_dims: 2 or 3.
    norm: one of `layers.NORMS`.
    dtype: computation dtype; parameters are float32.
    remat: rematerialise the residual blocks.
    partition: mesh axes for the leading axes of the outputs.
  """

  features: int
  num_steps: int
  spatial_dims: int = 3
  norm: str = "instance"
  dtype: jax.typing.DTypeLike = jnp.float32
  remat: bool = False
  partition: tuple[str | None, ...] | None = None

  @nn.compact
  def __call__(self, y: jax.Array, *, train: bool) -> jax.Array:
    """`f[B, *S, C] -> f[B, *2^num_steps S, features]`."""
    for j in range(self.num_steps):
      y = layers.UpConvTranspose(
        self.features,
        spatial_dims=self.spatial_dims,
        use_bias=False,
        dtype=self.dtype,
        name=f"upsample_{j}",
      )(y)
      if j > 0:
        block = res_block(
          self.features,
          spatial_dims=self.spatial_dims,
          norm=self.norm,
          dtype=self.dtype,
          name=f"block_{j}",
        )
        y = layers.apply_block(
          block, y, train=train, remat=self.remat, partition=self.partition
        )
    return sharding.constrain(y, self.partition)


__all__ = ["UNETR", "DeconvChain", "TransformerBlock", "UpBlock", "res_block"]
