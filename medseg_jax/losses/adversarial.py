"""Adversarial loss terms for a segmentor trained against a critic.

Two families, both per example (`f32[B]`), reduction left to the caller:

* Patch discriminators (pix2pix, Isola et al. 2017) output a logit per
  patch, `f32[B, *P, 1]`. `critic_loss(real, fake, kind)` is what the critic
  minimises, `segmentor_loss(fake, kind)` what the segmentor adds to its
  supervised loss; `kind` is one of `GAN_LOSSES`:

  - `"least_squares"` (Mao et al. 2017, LSGAN):
    critic `((D(r) - 1)^2 + D(f)^2) / 2`, segmentor `(D(f) - 1)^2 / 2`;
  - `"hinge"` (Lim & Ye 2017; Miyato et al. 2018):
    critic `relu(1 - D(r)) + relu(1 + D(f))`, segmentor `-D(f)`;
  - `"bce"` (Goodfellow et al. 2014, the non-saturating form):
    critic `-log s(D(r)) - log(1 - s(D(f)))`, segmentor `-log s(D(f))`.

  Each is averaged over the patches of an example.

* SegAN (Xue et al. 2018) compares a critic's hierarchical features of the
  image masked by the ground truth and by the prediction:
  `multiscale_l1(real_features, fake_features) = 1/L sum_l mean |f_l(x o y)
  - f_l(x o s)|`. The segmentor minimises it, the critic maximises it.

>>> real = jnp.ones((2, 4, 4, 1)) * 3.0
>>> critic_loss(real, -real, "hinge")  # both sides beyond the margin
Array([0., 0.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

GAN_LOSSES = ("least_squares", "hinge", "bce")


def check_kind(kind: str) -> None:
  """Raises ValueError unless `kind` is one of `GAN_LOSSES`."""
  if kind not in GAN_LOSSES:
    raise ValueError(
      f"Unknown adversarial loss {kind!r}; valid: {list(GAN_LOSSES)}."
    )


def _per_example(x: jax.Array) -> jax.Array:
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def critic_loss(
  real_logits: jax.typing.ArrayLike,
  fake_logits: jax.typing.ArrayLike,
  kind: str,
) -> jax.Array:
  """The patch critic's loss: real patches towards 1, fake ones away.

  Args:
    real_logits: `f32[B, *P, 1]`, the critic on (image, ground truth).
    fake_logits: `f32[B, *P, 1]`, the critic on (image, prediction).
    kind: one of `GAN_LOSSES`.

  Returns:
    `f32[B]`, each example's loss averaged over its patches.
  """
  check_kind(kind)
  real = jnp.asarray(real_logits, jnp.float32)
  fake = jnp.asarray(fake_logits, jnp.float32)
  if real.shape != fake.shape:
    raise ValueError(f"Shapes differ: real {real.shape}, fake {fake.shape}.")
  if kind == "least_squares":
    per_patch = 0.5 * (jnp.square(real - 1.0) + jnp.square(fake))
  elif kind == "hinge":
    per_patch = jax.nn.relu(1.0 - real) + jax.nn.relu(1.0 + fake)
  else:
    per_patch = optax.losses.sigmoid_binary_cross_entropy(
      real, jnp.ones_like(real)
    ) + optax.losses.sigmoid_binary_cross_entropy(fake, jnp.zeros_like(fake))
  return _per_example(per_patch)


def segmentor_loss(fake_logits: jax.typing.ArrayLike, kind: str) -> jax.Array:
  """The segmentor's adversarial term: its prediction should look real.

  Args:
    fake_logits: `f32[B, *P, 1]`, the critic on (image, prediction).
    kind: one of `GAN_LOSSES`.

  Returns:
    `f32[B]`.
  """
  check_kind(kind)
  fake = jnp.asarray(fake_logits, jnp.float32)
  if kind == "least_squares":
    per_patch = 0.5 * jnp.square(fake - 1.0)
  elif kind == "hinge":
    per_patch = -fake
  else:
    per_patch = optax.losses.sigmoid_binary_cross_entropy(
      fake, jnp.ones_like(fake)
    )
  return _per_example(per_patch)


def multiscale_l1(
  real_features: Sequence[jax.Array], fake_features: Sequence[jax.Array]
) -> jax.Array:
  """SegAN's multi-scale L1 distance between two feature hierarchies.

  `1/L sum_l mean_{voxels, channels} |real_l - fake_l|` (Xue et al. 2018,
  Eq. 3), per example.

  Args:
    real_features: `L` arrays `f32[B, *S_l, C_l]` (ground-truth side).
    fake_features: the same shapes (prediction side).

  Returns:
    `f32[B]`.
  """
  if len(real_features) != len(fake_features) or not real_features:
    raise ValueError(
      f"Need two non-empty hierarchies of equal depth; got "
      f"{len(real_features)} and {len(fake_features)} levels."
    )
  terms = []
  for real, fake in zip(real_features, fake_features, strict=True):
    if real.shape != fake.shape:
      raise ValueError(f"Level shapes differ: {real.shape} vs {fake.shape}.")
    diff = jnp.abs(real.astype(jnp.float32) - fake.astype(jnp.float32))
    terms.append(_per_example(diff))
  return sum(terms) / len(terms)
