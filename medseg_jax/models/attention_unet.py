"""Attention U-Net (Oktay et al., 2018), in 2-D and 3-D.

Reference: O. Oktay, J. Schlemper, L. Le Folgoc, M. Lee, M. Heinrich, K.
Misawa, K. Mori, S. McDonagh, N. Y. Hammerla, B. Kainz, B. Glocker, D.
Rueckert. "Attention U-Net: Learning Where to Look for the Pancreas". MIDL
2018. https://arxiv.org/abs/1804.03999

A U-Net (see `medseg_jax.models.unet`) whose skip connections pass through
additive attention gates before they are concatenated with the upsampled
decoder features. Each gate computes per-voxel coefficients `alpha` in
[0, 1] from the skip features `x` and a coarser gating signal `g`, and
forwards `x * alpha`, so that irrelevant regions of the skip are suppressed.
The coefficients are sown for inspection; `attention_maps` returns them at
the input resolution for plotting.

Choices where the paper leaves room (following the authors' released code,
github.com/ozan-oktay/Attention-Gated-Networks, where it is unambiguous):

* `W_x` is a 2^d convolution with stride 2 and no bias, which brings `x` to
  the resolution of `g` while seeing every voxel (a 1^d stride-2
  convolution would drop 2^d - 1 of every 2^d voxels).
* The gating signal of the gate at level `k` is the decoder's output at
  level `k + 1` (the bottleneck for the deepest gate), before upsampling.
  The released code adds a 1^d conv + norm + ReLU on the bottleneck first;
  that is left out here.
* By default every skip is gated; the released code leaves the finest skip
  ungated (`gate_finest=False` reproduces that).
* The gated skip goes through a 1^d convolution + normalisation + ReLU
  (`gate_projection=True`), as in the released code's `combine_gates`.
* The gates' intermediate width `F_int` defaults to the skip's channels, as
  in the released 3-D model (`unet_CT_single_att_dsv_3D`).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax import sharding
from medseg_jax.models import layers

INTERMEDIATES = "intermediates"


def attention_name(level: int) -> str:
  """Name under which the gate of skip level `level` sows its coefficients."""
  return f"attention_{level}"


class AttentionGate(nn.Module):
  """Additive attention gate (Oktay et al., 2018, Fig. 2 and Eq. 1-2).

    q     = psi(relu(W_x x + W_g g + b_g)) + b_psi     at g's resolution
    alpha = resize(sigmoid(q), x's resolution)         (bi/trilinear)
    out   = x * alpha   [then 1^d conv + norm + ReLU if `project`]

  Attributes:
    features: channels of the intermediate space (`F_int` in the paper).
    spatial_dims: 2 or 3.
    norm: normalisation after the output projection (one of
      `layers.NORMS`).
    project: apply a 1^d convolution + normalisation + ReLU to
      `x * alpha`.
    dtype: computation dtype; parameters are float32.
  """

  features: int
  spatial_dims: int = 2
  norm: str = "batch"
  project: bool = True
  dtype: jax.typing.DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self, x: jax.Array, g: jax.Array, *, train: bool
  ) -> tuple[jax.Array, jax.Array]:
    """Gates `x` with `g`.

    Args:
      x: `f[B, *S, C_x]` skip features; `S` must be `2 * S_g`.
      g: `f[B, *S_g, C_g]` gating signal.
      train: training mode (affects batch norm only).

    Returns:
      `(out, alpha)`: `out: f[B, *S, C_x]` in `dtype` and
      `alpha: f32[B, *S, 1]`, the attention coefficients in [0, 1].

    Raises:
      ValueError: if `x` is not exactly twice the size of `g`.
    """
    d = self.spatial_dims
    if tuple(x.shape[1:-1]) != tuple(2 * s for s in g.shape[1:-1]):
      raise ValueError(
        f"AttentionGate needs x at twice g's resolution; got x "
        f"{tuple(x.shape)} and g {tuple(g.shape)}."
      )
    x = x.astype(self.dtype)
    theta_x = layers.conv(
      self.features,
      2,
      spatial_dims=d,
      norm="batch",  # I.e. no bias: W_g's bias b_g serves both.
      strides=2,
      padding="VALID",
      dtype=self.dtype,
      name="theta_x",
    )(x)
    phi_g = nn.Conv(
      self.features,
      (1,) * d,
      kernel_init=layers.conv_init,
      dtype=self.dtype,
      name="phi_g",
    )(g.astype(self.dtype))
    f = nn.relu(theta_x + phi_g)
    q = nn.Conv(
      1,
      (1,) * d,
      kernel_init=nn.initializers.lecun_normal(),
      dtype=self.dtype,
      name="psi",
    )(f)
    alpha = nn.sigmoid(q.astype(jnp.float32))
    # Linear interpolation is a convex combination of neighbours, so the
    # resampled coefficients stay in [0, 1].
    alpha = jax.image.resize(
      alpha, (*x.shape[:-1], 1), method="linear", antialias=False
    )
    out = x * alpha.astype(self.dtype)
    if self.project:
      out = layers.conv(
        x.shape[-1],
        1,
        spatial_dims=d,
        norm=self.norm,
        dtype=self.dtype,
        name="project",
      )(out)
      out = layers.make_norm(
        self.norm, train=train, dtype=self.dtype, name="project_norm"
      )(out)
      out = nn.relu(out)
    return out, alpha


class AttentionUNet(nn.Module):
  """Attention U-Net returning per-voxel class logits.

  The U-Net of `medseg_jax.models.unet.UNet` (two 3^d conv + norm + ReLU
  per level, 2^d max pooling, up-convolution, concatenation `[skip,
  upsampled]`, 1^d head) with an `AttentionGate` on each gated skip
  connection. At decoder level `k` (`k = len(features) - 2, ..., 0`), with
  `h` the decoder output one level coarser (the bottleneck for the first):

    skip_k' = gate_k(skip_k, g=h)          if level k is gated, else skip_k
    h       = ConvBlock([skip_k', upconv(h)])

  Sown values. For every gated level `k` the coefficients
  `alpha_k: f32[B, *S/2^k, 1]` (the resolution of that skip, `S` the
  (padded) input size) are sown into the collection `"intermediates"` under
  the name `"attention_{k}"`, as a 1-tuple (the Flax convention):

    >>> logits, state = model.apply(
    ...     {"params": params}, x, train=False, mutable=["intermediates"])
    >>> alpha_1 = state["intermediates"]["attention_1"][0]

  Gated levels are `0, ..., len(features) - 2` (or from 1 with
  `gate_finest=False`). `init` does not sow. Pass only `params` (and
  `batch_stats`) as variables: sow appends to tuples already present.
  `attention_maps` does all this and resamples to the input size.

  Example:

    >>> model = AttentionUNet(num_classes=2, features=(8, 16, 32))
    >>> x = jnp.zeros((1, 64, 64, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (1, 64, 64, 2)
    >>> {k: v.shape for k, v in attention_maps(model, variables, x).items()}
    {'attention_0': (1, 64, 64), 'attention_1': (1, 64, 64)}

  Attributes:
    num_classes: number of output channels (logits).
    features: channels per resolution level, finest first; the last entry is
      the bottleneck. Spatial sizes must be multiples of
      `2 ** (len(features) - 1)` (or see `pad_input`). The released
      3-D code divides `(64, 128, 256, 512, 1024)` by a `feature_scale` of
      4 by default: `(16, 32, 64, 128, 256)`.
    spatial_dims: 2 (`[B, H, W, C]`) or 3 (`[B, D, H, W, C]`).
    norm: `"batch"`, `"group"`, `"instance"` or `"none"`.
    upsample: `"transpose"` or `"resize"`, as in `UNet`.
    in_channels: if set, the number of input channels is checked.
    dtype: computation dtype; parameters, logits and coefficients are
      float32.
    gate_features: intermediate channels of every gate (`F_int`); `None`
      means the channels of the gated skip, as in the released code.
    gate_finest: whether the full-resolution skip is gated too.
    gate_projection: 1^d convolution + normalisation + ReLU after gating.
    pad_input: zero-pad inputs whose spatial sizes are not multiples of
      `2 ** (len(features) - 1)` and crop the logits back; if False such
      inputs raise a ValueError. Sown coefficients stay at the padded size.
    remat: rematerialise every convolution block, as in `UNet`.
    partition: mesh axis names for the leading axes of the input and of
      every convolution block's output, as in `UNet`.
  """

  num_classes: int
  features: Sequence[int] = (64, 128, 256, 512, 1024)
  spatial_dims: int = 2
  norm: str = "batch"
  upsample: str = "transpose"
  in_channels: int | None = None
  dtype: jax.typing.DTypeLike = jnp.float32
  gate_features: int | None = None
  gate_finest: bool = True
  gate_projection: bool = True
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
    if len(self.features) < 2:
      raise ValueError(
        "features must have at least two entries (one skip to gate), got "
        f"{tuple(self.features)}."
      )
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
    super().__post_init__()

  def gated_levels(self) -> tuple[int, ...]:
    """Skip levels with an attention gate, finest first."""
    first = 0 if self.gate_finest else 1
    return tuple(range(first, len(self.features) - 1))

  @nn.compact
  def __call__(self, x: jax.typing.ArrayLike, *, train: bool) -> jax.Array:
    """Computes logits (and sows attention coefficients).

    Args:
      x: `f32[B, H, W, C]` (2-D) or `f32[B, D, H, W, C]` (3-D) image.
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
      model="AttentionUNet",
      spatial_dims=d,
      in_channels=self.in_channels,
      num_downsamplings=num_levels - 1,
      pad_input=self.pad_input,
    )
    x = sharding.constrain(x.astype(self.dtype), self.partition)

    def block(features: int, name: str, x: jax.Array) -> jax.Array:
      module = layers.ConvBlock(
        features, spatial_dims=d, norm=self.norm, dtype=self.dtype, name=name
      )
      return layers.apply_block(
        module, x, train=train, remat=self.remat, partition=self.partition
      )

    skips = []
    for level, features in enumerate(self.features[:-1]):
      x = block(features, f"down_{level}", x)
      skips.append(x)
      x = layers.max_pool(x, d)

    x = block(self.features[-1], "bottleneck", x)

    gated = self.gated_levels()
    for level in reversed(range(num_levels - 1)):
      features = self.features[level]
      skip = skips[level]
      if level in gated:
        skip, alpha = AttentionGate(
          self.gate_features or features,
          spatial_dims=d,
          norm=self.norm,
          project=self.gate_projection,
          dtype=self.dtype,
          name=f"gate_{level}",
        )(skip, x, train=train)
        if not self.is_initializing():
          self.sow(INTERMEDIATES, attention_name(level), alpha)
      x = layers.UpConv(
        features,
        spatial_dims=d,
        mode=self.upsample,
        dtype=self.dtype,
        name=f"upsample_{level}",
      )(x)
      x = jnp.concatenate([skip, x.astype(self.dtype)], axis=-1)
      x = block(features, f"up_{level}", x)

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


def attention_maps(
  model: AttentionUNet,
  variables: dict,
  x: jax.typing.ArrayLike,
) -> dict[str, jax.Array]:
  """Attention coefficients of every gate, resampled to the input size.

  Runs the model in evaluation mode (`train=False`) and collects the sown
  coefficients; each map is resized (bi/trilinear) from its skip's
  resolution to the input's, for overlays. Values stay in [0, 1]. Wrap in
  `jax.jit` (with `model` closed over) for repeated use.

  Args:
    model: the `AttentionUNet`.
    variables: its variables; only `params` and `batch_stats` are used.
    x: `f32[B, *S, C]` input, as for the model.

  Returns:
    `{"attention_{k}": f32[B, *S]}` for every gated level `k` (see
    `AttentionUNet.gated_levels`), finest first.
  """
  x = jnp.asarray(x)
  variables = {
    k: v for k, v in variables.items() if k in ("params", "batch_stats")
  }
  _, state = model.apply(variables, x, train=False, mutable=[INTERMEDIATES])
  sown = state[INTERMEDIATES]
  spatial = tuple(x.shape[1:-1])
  padded = spatial
  if model.pad_input:
    padded = layers.padded_size(spatial, 2 ** (len(model.features) - 1))
  maps = {}
  for level in model.gated_levels():
    name = attention_name(level)
    (alpha,) = sown[name]
    alpha = alpha[..., 0]
    if alpha.shape[1:] != padded:
      alpha = jax.image.resize(
        alpha, (alpha.shape[0], *padded), method="linear", antialias=False
      )
    maps[name] = alpha[(slice(None), *(slice(0, s) for s in spatial))]
  return maps
