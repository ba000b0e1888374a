"""Critics for adversarial segmentation training, 2-D and 3-D.

A critic sees an image together with a label map, `f32[B, *S, K]` with one
channel per foreground class: the one-hot ground truth ("real") or the
segmentor's softmax probabilities ("fake"). Two designs, chosen by name in
`config.adversarial.critic.name` (see `CRITICS` and `from_config`):

* `"segan"`: SegAN's critic (Xue et al. 2018). The image is masked by each
  label channel (`x * y_k`, so `C * K` channels) and passed through strided
  4^d convolutions with LeakyReLU(0.2); the output is the list of every
  level's features, the input included, for the multi-scale L1 loss
  (`losses.adversarial.multiscale_l1`).
* `"patchgan"`: pix2pix's conditional PatchGAN (Isola et al. 2017), on the
  image and the label map concatenated: a 4^d convolution with `ndf`
  channels and stride 2, `num_layers - 1` more with doubling channels
  (capped at `8 * ndf`) and stride 2, one with stride 1, each followed by a
  normalisation (not the first) and LeakyReLU(0.2), then a 4^d
  convolution to one logit per patch. With the defaults (3 layers, ndf 64)
  each logit sees a 70x70 patch. "SAME" padding keeps small 3-D patches from
  shrinking to nothing.

Normalisation: `"instance"` or `"none"` (a critic sees real and fake maps
in one batch, so batch statistics would mix them). A convolution followed
by a normalisation has no bias: the mean subtraction cancels it, and Adam
would turn its zero gradient's rounding noise into steps. `spectral_norm=True`
divides every convolution kernel by its largest singular value (Miyato et
al. 2018, `flax.linen.SpectralNorm`); the power-iteration vector lives in
the `batch_stats` collection and is updated when `update_stats=True`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax.models import layers

CRITIC_NORMS = ("instance", "none")


def _conv(
  x, features, strides, *, spatial_dims, spectral, update, name, bias=True
):
  conv = layers.Conv(
    features,
    4,
    spatial_dims=spatial_dims,
    strides=strides,
    padding="SAME",
    use_bias=bias,
    kernel_init=nn.initializers.normal(0.02),  # pix2pix's initialisation.
    name=name,
  )
  if spectral:
    return nn.SpectralNorm(conv, name=f"{name}_sn")(x, update_stats=update)
  return conv(x)


def _norm(x, norm, name):
  if norm == "instance":
    return nn.InstanceNorm(epsilon=1e-5, name=name)(x)
  return x


def _check(norm: str, spatial_dims: int) -> None:
  if norm not in CRITIC_NORMS:
    raise ValueError(
      f"Unknown critic norm {norm!r}; valid: {list(CRITIC_NORMS)}."
    )
  layers.check_spatial_dims(spatial_dims)


class SegANCritic(nn.Module):
  """SegAN's multi-scale feature critic.

  Attributes:
    features: channels of each strided convolution (the paper: 64, 128,
      256).
    spatial_dims: 2 or 3.
    norm: one of `CRITIC_NORMS`, after every convolution but the first.
    spectral_norm: spectrally normalise every kernel.
  """

  features: Sequence[int] = (64, 128, 256)
  spatial_dims: int = 2
  norm: str = "instance"
  spectral_norm: bool = False

  @nn.compact
  def __call__(
    self, image: jax.Array, label_map: jax.Array, update_stats: bool = False
  ) -> list[jax.Array]:
    """`f32[B, *S, C]`, `f32[B, *S, K]` -> `L + 1` feature arrays."""
    _check(self.norm, self.spatial_dims)
    shape = image.shape[:-1]
    x = (image[..., :, None] * label_map[..., None, :]).reshape(*shape, -1)
    outputs = [x]
    for i, features in enumerate(self.features):
      x = _conv(
        x,
        features,
        2,
        spatial_dims=self.spatial_dims,
        spectral=self.spectral_norm,
        update=update_stats,
        name=f"conv{i}",
        bias=i == 0 or self.norm == "none",
      )
      if i:
        x = _norm(x, self.norm, f"norm{i}")
      x = nn.leaky_relu(x, 0.2)
      outputs.append(x)
    return outputs


class PatchGAN(nn.Module):
  """pix2pix's conditional PatchGAN discriminator.

  Attributes:
    ndf: channels of the first convolution.
    num_layers: strided convolutions (pix2pix's `n_layers`, default 3).
    spatial_dims: 2 or 3.
    norm: one of `CRITIC_NORMS`, after every convolution but the first and
      the last.
    spectral_norm: spectrally normalise every kernel.
  """

  ndf: int = 64
  num_layers: int = 3
  spatial_dims: int = 2
  norm: str = "instance"
  spectral_norm: bool = False

  @nn.compact
  def __call__(
    self, image: jax.Array, label_map: jax.Array, update_stats: bool = False
  ) -> jax.Array:
    """`f32[B, *S, C]`, `f32[B, *S, K]` -> patch logits `f32[B, *P, 1]`."""
    _check(self.norm, self.spatial_dims)
    if self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {self.num_layers}.")
    conv = dict(
      spatial_dims=self.spatial_dims,
      spectral=self.spectral_norm,
      update=update_stats,
    )
    x = jnp.concatenate([image, label_map.astype(image.dtype)], axis=-1)
    x = nn.leaky_relu(_conv(x, self.ndf, 2, name="conv0", **conv), 0.2)
    for i in range(1, self.num_layers + 1):
      strides = 2 if i < self.num_layers else 1
      features = self.ndf * min(2**i, 8)
      x = _conv(
        x,
        features,
        strides,
        name=f"conv{i}",
        bias=self.norm == "none",
        **conv,
      )
      x = nn.leaky_relu(_norm(x, self.norm, f"norm{i}"), 0.2)
    return _conv(x, 1, 1, name="logits", **conv)


CRITICS: dict[str, Any] = {"segan": SegANCritic, "patchgan": PatchGAN}

# Options each critic takes from the config (besides spatial_dims).
_OPTIONS = {
  "segan": ("features", "norm", "spectral_norm"),
  "patchgan": ("ndf", "num_layers", "norm", "spectral_norm"),
}


def check_name(name: str) -> None:
  """Raises ValueError unless `name` is one of `CRITICS`."""
  if name not in CRITICS:
    raise ValueError(f"Unknown critic {name!r}; valid: {sorted(CRITICS)}.")


def from_config(critic_config: Any, spatial_dims: int) -> nn.Module:
  """Builds `config.adversarial.critic` (`name` plus that critic's options).

  Raises:
    ValueError: for an unknown critic name, or an option the critic does not
      take (the message lists the valid ones).
  """
  name = critic_config.get("name", "")
  check_name(name)
  options = {k: v for k, v in dict(critic_config).items() if k != "name"}
  unknown = sorted(set(options) - set(_OPTIONS[name]))
  if unknown:
    raise ValueError(
      f"Critic {name!r} takes no option {unknown}; valid: "
      f"{sorted(_OPTIONS[name])}."
    )
  if "features" in options:
    options["features"] = tuple(options["features"])
  module = CRITICS[name](spatial_dims=spatial_dims, **options)
  _check(module.norm, spatial_dims)
  return module
