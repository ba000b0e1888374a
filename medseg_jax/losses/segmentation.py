"""Segmentation losses on logits and integer labels, in the optax style.

All losses take

* `logits: f32[B, *S, C]` (channels-last; `S` is `H, W` or `D, H, W`),
* `labels: int[B, *S]` with class ids in `[0, C)`,
* `mask: [B, *S] | None`, nonzero where a voxel counts (e.g. zero on padding
  or on an "ignore" label). Labels under a zero mask may hold any value,
  including out-of-range ignore values such as 255.

and return one value per example, `f32[B]`; the caller reduces over the
batch (e.g. `jnp.mean`, or a weighted mean that skips padded examples).
Shapes are checked in Python at trace time; nothing branches on array
values, so every loss works under `jax.jit`, `jax.grad` and `jax.vmap`.
Losses are computed in at least float32, whatever the logits' dtype.
"""

import jax
import jax.numpy as jnp
import optax


def _prepare(
  logits: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  mask: jax.typing.ArrayLike | None,
  fn_name: str,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Converts and shape-checks the inputs; returns float logits, bool mask."""
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.ndim < 3:
    raise ValueError(
      f"{fn_name}: logits must be [B, *S, C] with at least one spatial "
      f"axis, got shape {logits.shape}."
    )
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
      f"{fn_name}: labels must be int[B, *S] = {logits.shape[:-1]} for "
      f"logits of shape {logits.shape} (integer class ids, not one-hot), "
      f"got shape {labels.shape}."
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
      f"{fn_name}: labels must hold integer class ids, got dtype "
      f"{labels.dtype}."
    )
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.shape != labels.shape:
      raise ValueError(
        f"{fn_name}: mask must have the labels' shape {labels.shape}, got "
        f"{mask.shape}."
      )
    mask = mask != 0
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  return logits.astype(dtype), labels, mask


def cross_entropy(
  logits: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy averaged over the (valid) voxels of each example.

  .. math::
    \ell_b = \frac{1}{|V_b|} \sum_{i \in V_b} -\log \mathrm{softmax}(z_{b,i})
      _{y_{b,i}}

  where `V_b` is the set of voxels of example `b` with nonzero mask (all
  voxels without a mask). The per-voxel term is
  `optax.losses.softmax_cross_entropy_with_integer_labels`. An example with
  no valid voxel has loss 0.

  Example:

    >>> logits = jnp.zeros((2, 4, 4, 3))
    >>> labels = jnp.zeros((2, 4, 4), jnp.int32)
    >>> cross_entropy(logits, labels)  # log(3) for both examples.
    Array([1.0986123, 1.0986123], dtype=float32)

  Args:
    logits: `f32[B, *S, C]` unnormalised scores.
    labels: `int[B, *S]` class ids in `[0, C)` (any value where masked).
    mask: optional `[B, *S]`, nonzero where the voxel counts.

  Returns:
    `f32[B]` per-example loss.
  """
  logits, labels, mask = _prepare(logits, labels, mask, "cross_entropy")
  axes = tuple(range(1, labels.ndim))
  if mask is None:
    per_voxel = optax.losses.softmax_cross_entropy_with_integer_labels(
      logits, labels
    )
    return jnp.mean(per_voxel, axis=axes)
  # Replace masked labels by a valid id so that ignore values (e.g. 255)
  # cannot produce NaN, then zero out their contribution with `where`
  # (multiplying would propagate a NaN; `where` also blocks its gradient).
  safe_labels = jnp.where(mask, labels, 0)
  per_voxel = optax.losses.softmax_cross_entropy_with_integer_labels(
    logits, safe_labels
  )
  total = jnp.sum(jnp.where(mask, per_voxel, 0.0), axis=axes)
  count = jnp.sum(mask, axis=axes, dtype=total.dtype)
  return total / jnp.maximum(count, 1.0)


def soft_dice(
  logits: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  mask: jax.typing.ArrayLike | None = None,
  *,
  include_background: bool = False,
  smooth: float = 1e-5,
) -> jax.Array:
  r"""Soft Dice loss per example (Milletari et al., 2016).

  With `p = softmax(logits)` and `t = one_hot(labels)`, summing over the
  valid voxels `i` of one example:

  .. math::
    D_c = \frac{2 \sum_i p_{i,c} t_{i,c} + s}{\sum_i p_{i,c} + \sum_i t_{i,c}
      + s}, \qquad \ell = 1 - \frac{1}{|K|} \sum_{c \in K} D_c

  where `K` is all classes, or all but class 0 when
  `include_background=False`. The denominator is linear in `p` (as in
  nnU-Net and `optax.losses.dice_loss`), not the sum of squares of the
  V-Net paper. The loss lies in `[0, 1]`.

  A class absent from an example's labels scores `D_c ~ 1` only if its
  predicted mass `sum_i p_{i,c}` is well below `smooth`; with the small
  default `smooth`, absent classes therefore push their probabilities to
  zero firmly. Use a larger `smooth` (optax uses 1) for a softer penalty.

  Equals `optax.losses.dice_loss(logits, one_hot(labels), smooth=smooth / 2,
  ignore_background=not include_background)` when `mask` is None. That
  function is not reused because it has no mask and its probability input
  path branches on array values, which fails under `jax.jit`.

  Example:

    >>> labels = jnp.array([[[0, 1], [1, 2]]])  # [B=1, H=2, W=2]
    >>> logits = 20.0 * jax.nn.one_hot(labels, 3)
    >>> soft_dice(logits, labels)  # Perfect prediction.
    Array([0.], dtype=float32)

  Reference: F. Milletari, N. Navab, S.-A. Ahmadi. "V-Net: Fully
  Convolutional Neural Networks for Volumetric Medical Image Segmentation".
  3DV 2016. https://arxiv.org/abs/1606.04797

  Args:
    logits: `f32[B, *S, C]` unnormalised scores.
    labels: `int[B, *S]` class ids in `[0, C)` (any value where masked).
    mask: optional `[B, *S]`, nonzero where the voxel counts. Masked voxels
      contribute neither prediction nor target mass.
    include_background: whether class 0 enters the mean over classes.
    smooth: additive smoothing `s > 0`; keeps `D_c` defined (= 1) for a
      class that is absent from both labels and prediction.

  Returns:
    `f32[B]` per-example loss.

  Raises:
    ValueError: on shape mismatch, or if no class is left to average
      (`C == 1` without background).
  """
  logits, labels, mask = _prepare(logits, labels, mask, "soft_dice")
  num_classes = logits.shape[-1]
  if not include_background and num_classes < 2:
    raise ValueError(
      "soft_dice: include_background=False needs at least 2 classes, got "
      f"logits with {num_classes}."
    )
  probs = jax.nn.softmax(logits, axis=-1)
  targets = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)
  if mask is not None:
    probs = jnp.where(mask[..., None], probs, 0.0)
    targets = jnp.where(mask[..., None], targets, 0.0)
  axes = tuple(range(1, labels.ndim))
  intersection = jnp.sum(probs * targets, axis=axes)  # [B, C]
  denominator = jnp.sum(probs, axis=axes) + jnp.sum(targets, axis=axes)
  dice = (2.0 * intersection + smooth) / (denominator + smooth)
  if not include_background:
    dice = dice[:, 1:]
  return 1.0 - jnp.mean(dice, axis=-1)


def ce_dice(
  logits: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  mask: jax.typing.ArrayLike | None = None,
  *,
  dice_weight: float = 1.0,
  include_background: bool = False,
  smooth: float = 1e-5,
) -> jax.Array:
  r"""Cross-entropy plus weighted soft Dice, per example.

  .. math::
    \ell = \ell_{CE} + w \, \ell_{Dice}

  The compound loss used by nnU-Net (Isensee et al., 2021). See
  `cross_entropy` and `soft_dice` for the terms and arguments.

  Example:

    >>> logits = jnp.zeros((2, 8, 8, 4))
    >>> labels = jnp.ones((2, 8, 8), jnp.int32)
    >>> ce_dice(logits, labels, dice_weight=0.5).shape
    (2,)

  Args:
    logits: `f32[B, *S, C]` unnormalised scores.
    labels: `int[B, *S]` class ids in `[0, C)` (any value where masked).
    mask: optional `[B, *S]`, nonzero where the voxel counts.
    dice_weight: weight `w` of the Dice term.
    include_background: passed to `soft_dice`.
    smooth: passed to `soft_dice`.

  Returns:
    `f32[B]` per-example loss.
  """
  ce = cross_entropy(logits, labels, mask)
  dice = soft_dice(
    logits,
    labels,
    mask,
    include_background=include_background,
    smooth=smooth,
  )
  return ce + dice_weight * dice
