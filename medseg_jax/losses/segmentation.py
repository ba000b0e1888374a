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


def _check_classes(
  logits: jax.Array, include_background: bool, fn_name: str
) -> None:
  """Raises if no class is left once the background is dropped."""
  num_classes = logits.shape[-1]
  if not include_background and num_classes < 2:
    raise ValueError(
      f"{fn_name}: include_background=False needs at least 2 classes, got "
      f"logits with {num_classes}."
    )


def _probs_and_targets(
  logits: jax.Array, labels: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
  """Softmax probabilities and one-hot targets, `f32[B, *S, C]` each, both
  zero on masked voxels (so masked voxels carry no mass of either)."""
  probs = jax.nn.softmax(logits, axis=-1)
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=probs.dtype)
  if mask is not None:
    probs = jnp.where(mask[..., None], probs, 0.0)
    targets = jnp.where(mask[..., None], targets, 0.0)
  return probs, targets


def _class_sums(
  probs: jax.Array, targets: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-example, per-class `sum p t`, `sum p` and `sum t`: `f32[B, C]`."""
  axes = tuple(range(1, probs.ndim - 1))
  return (
    jnp.sum(probs * targets, axis=axes),
    jnp.sum(probs, axis=axes),
    jnp.sum(targets, axis=axes),
  )


def _select(per_class: jax.Array, include_background: bool) -> jax.Array:
  """`[B, C]` -> the classes averaged over (all, or all but class 0)."""
  return per_class if include_background else per_class[:, 1:]


def _voxel_mean(per_voxel: jax.Array, mask: jax.Array | None) -> jax.Array:
  """`f32[B, *S]` -> `f32[B]`: the mean over each example's valid voxels
  (0 for an example without any). Masked values, even NaN, are ignored:
  `where` also blocks their gradient, where multiplying would not."""
  axes = tuple(range(1, per_voxel.ndim))
  if mask is None:
    return jnp.mean(per_voxel, axis=axes)
  total = jnp.sum(jnp.where(mask, per_voxel, 0.0), axis=axes)
  count = jnp.sum(mask, axis=axes, dtype=total.dtype)
  return total / jnp.maximum(count, 1.0)


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
  # Masked labels are replaced by a valid id so that ignore values (e.g.
  # 255) cannot produce NaN; `_voxel_mean` then drops them.
  safe_labels = labels if mask is None else jnp.where(mask, labels, 0)
  per_voxel = optax.losses.softmax_cross_entropy_with_integer_labels(
    logits, safe_labels
  )
  return _voxel_mean(per_voxel, mask)


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
  _check_classes(logits, include_background, "soft_dice")
  probs, targets = _probs_and_targets(logits, labels, mask)
  intersection, pred_sum, target_sum = _class_sums(probs, targets)
  dice = (2.0 * intersection + smooth) / (pred_sum + target_sum + smooth)
  return 1.0 - jnp.mean(_select(dice, include_background), axis=-1)


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


def _safe_power(x: jax.Array, exponent: float) -> jax.Array:
  """`max(x, 0) ** exponent` with finite gradients everywhere, also at 0
  for exponents below 1 (where the gradient is then 0); `0 ** 0 = 1`."""
  if exponent == 0:
    return jnp.ones_like(x)
  positive = x > 0
  safe = jnp.where(positive, x, 1.0)
  return jnp.where(positive, safe**exponent, 0.0)


def _check_range(value: float, low: float, high: float, what: str) -> None:
  if not low <= value <= high:
    raise ValueError(f"{what} must lie in [{low}, {high}], got {value}.")


def focal(
  logits: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  mask: jax.typing.ArrayLike | None = None,
  *,
  gamma: float = 2.0,
  alpha: float | tuple[float, ...] | None = None,
) -> jax.Array:
  r"""Softmax focal loss averaged over the (valid) voxels (Lin et al., 2017).

  With `p_t = softmax(z)_{y}` the probability of the true class:

  .. math::
    \ell_b = \frac{1}{|V_b|} \sum_{i \in V_b} -\alpha_{y_i}
      (1 - p_{t,i})^\gamma \log p_{t,i}

  `gamma = 0` and `alpha = None` give `cross_entropy` exactly. Larger
  `gamma` down-weights voxels that are already well classified. `alpha`
  weights the classes: `None` (all 1), a float `a` in `[0, 1]` (the
  paper's binary form generalised: `1 - a` for the background class 0 and
  `a` for every foreground class), or one non-negative weight per class.
  The loss is non-negative, 0 only for a perfect prediction, and at most
  `max(alpha) * cross_entropy`. `optax.losses.sigmoid_focal_loss` is the
  sigmoid (multi-label) form; this is the softmax form, built on
  `optax.losses.softmax_cross_entropy_with_integer_labels`.

  Example:

    >>> logits = jnp.zeros((1, 4, 4, 2))
    >>> labels = jnp.zeros((1, 4, 4), jnp.int32)
    >>> focal(logits, labels, gamma=2.0)  # 0.25 * log(2)
    Array([0.1732868], dtype=float32)

  Reference: T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollar. "Focal
  Loss for Dense Object Detection". ICCV 2017.
  https://arxiv.org/abs/1708.02002

  Args:
    logits: `f32[B, *S, C]` unnormalised scores.
    labels: `int[B, *S]` class ids in `[0, C)` (any value where masked).
    mask: optional `[B, *S]`, nonzero where the voxel counts.
    gamma: focusing exponent `>= 0`.
    alpha: class weights, see above.

  Returns:
    `f32[B]` per-example loss.

  Raises:
    ValueError: on shape mismatch, `gamma < 0`, a float `alpha` outside
      `[0, 1]`, or a sequence `alpha` without one weight `>= 0` per class.
  """
  logits, labels, mask = _prepare(logits, labels, mask, "focal")
  num_classes = logits.shape[-1]
  if gamma < 0:
    raise ValueError(f"focal: gamma must be >= 0, got {gamma}.")
  safe_labels = labels if mask is None else jnp.where(mask, labels, 0)
  log_pt = -optax.losses.softmax_cross_entropy_with_integer_labels(
    logits, safe_labels
  )
  # 1 - p_t without cancellation when p_t is close to 1.
  per_voxel = -_safe_power(-jnp.expm1(log_pt), gamma) * log_pt
  if alpha is not None:
    if isinstance(alpha, int | float):
      _check_range(alpha, 0.0, 1.0, "focal: a float alpha")
      weights = [1.0 - alpha] + [float(alpha)] * (num_classes - 1)
    else:
      weights = [float(a) for a in alpha]
      if len(weights) != num_classes or min(weights) < 0:
        raise ValueError(
          f"focal: alpha must be a float in [0, 1] or {num_classes} "
          f"non-negative class weights, got {alpha}."
        )
    per_voxel = jnp.asarray(weights, per_voxel.dtype)[safe_labels] * per_voxel
  return _voxel_mean(per_voxel, mask)


def _tversky_index(
  logits: jax.Array,
  labels: jax.Array,
  mask: jax.Array | None,
  alpha: float,
  beta: float,
  smooth: float,
  fn_name: str,
) -> jax.Array:
  """Per-example, per-class Tversky index, `f32[B, C]`."""
  _check_range(alpha, 0.0, float("inf"), f"{fn_name}: alpha")
  _check_range(beta, 0.0, float("inf"), f"{fn_name}: beta")
  if smooth <= 0:
    raise ValueError(f"{fn_name}: smooth must be > 0, got {smooth}.")
  probs, targets = _probs_and_targets(logits, labels, mask)
  tp, pred_sum, target_sum = _class_sums(probs, targets)
  fp, fn = pred_sum - tp, target_sum - tp
  return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def tversky(
  logits: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  mask: jax.typing.ArrayLike | None = None,
  *,
  alpha: float = 0.3,
  beta: float = 0.7,
  include_background: bool = False,
  smooth: float = 1e-5,
) -> jax.Array:
  r"""Tversky loss per example (Salehi et al., 2017).

  With soft counts per class over the valid voxels, `TP_c = sum p t`,
  `FP_c = sum p (1 - t)`, `FN_c = sum (1 - p) t`:

  .. math::
    TI_c = \frac{TP_c + s}{TP_c + \alpha FP_c + \beta FN_c + s}, \qquad
    \ell = 1 - \frac{1}{|K|} \sum_{c \in K} TI_c

  `alpha` weighs false positives and `beta` false negatives; the paper's
  best lesion setting is `alpha = 0.3, beta = 0.7` (recall favoured).
  `alpha = beta = 0.5` is the soft Dice loss: `tversky(s)` equals
  `soft_dice(smooth=2 s)`. For `alpha, beta >= 0` the loss lies in
  `[0, 1]` and is 0 for a perfect prediction.

  Example:

    >>> labels = jnp.array([[[0, 1], [1, 1]]])
    >>> tversky(20.0 * jax.nn.one_hot(labels, 2), labels)
    Array([0.], dtype=float32)

  Reference: S. S. M. Salehi, D. Erdogmus, A. Gholipour. "Tversky loss
  function for image segmentation using 3D fully convolutional deep
  networks". MLMI 2017. https://arxiv.org/abs/1706.05721

  Args:
    logits: `f32[B, *S, C]` unnormalised scores.
    labels: `int[B, *S]` class ids in `[0, C)` (any value where masked).
    mask: optional `[B, *S]`, nonzero where the voxel counts.
    alpha: false-positive weight, `>= 0`.
    beta: false-negative weight, `>= 0`.
    include_background: whether class 0 enters the mean over classes.
    smooth: additive smoothing `s > 0` (an absent, unpredicted class has
      `TI_c ~ 1`).

  Returns:
    `f32[B]` per-example loss.
  """
  logits, labels, mask = _prepare(logits, labels, mask, "tversky")
  _check_classes(logits, include_background, "tversky")
  index = _tversky_index(logits, labels, mask, alpha, beta, smooth, "tversky")
  return 1.0 - jnp.mean(_select(index, include_background), axis=-1)


def focal_tversky(
  logits: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  mask: jax.typing.ArrayLike | None = None,
  *,
  alpha: float = 0.3,
  beta: float = 0.7,
  gamma: float = 4.0 / 3.0,
  include_background: bool = False,
  smooth: float = 1e-5,
) -> jax.Array:
  r"""Focal Tversky loss per example (Abraham & Khan, 2019).

  .. math::
    \ell = \frac{1}{|K|} \sum_{c \in K} (1 - TI_c)^{1/\gamma}

  with `TI_c` the Tversky index of `tversky`. The exponent is `1 / gamma`
  as in the paper (best `gamma = 4/3`, range `[1, 3]`): `gamma > 1`
  raises the loss of classes that are already well segmented less than of
  poorly segmented ones, and keeps the gradient large near the optimum.
  `gamma = 1` is `tversky` exactly. The mean over classes replaces the
  paper's sum so the loss lies in `[0, 1]`; it is 0 for a perfect
  prediction. The power is taken with a guard so that gradients stay
  finite (zero) where `TI_c = 1`.

  Example:

    >>> labels = jnp.array([[[0, 1], [1, 1]]])
    >>> focal_tversky(jnp.zeros((1, 2, 2, 2)), labels).shape
    (1,)

  Reference: N. Abraham, N. M. Khan. "A Novel Focal Tversky Loss Function
  with Improved Attention U-Net for Lesion Segmentation". ISBI 2019.
  https://arxiv.org/abs/1810.07842

  Args:
    logits: `f32[B, *S, C]` unnormalised scores.
    labels: `int[B, *S]` class ids in `[0, C)` (any value where masked).
    mask: optional `[B, *S]`, nonzero where the voxel counts.
    alpha: false-positive weight of the Tversky index.
    beta: false-negative weight of the Tversky index.
    gamma: focal parameter `> 0`; the exponent is `1 / gamma`.
    include_background: whether class 0 enters the mean over classes.
    smooth: additive smoothing of the Tversky index.

  Returns:
    `f32[B]` per-example loss.
  """
  logits, labels, mask = _prepare(logits, labels, mask, "focal_tversky")
  _check_classes(logits, include_background, "focal_tversky")
  if gamma <= 0:
    raise ValueError(f"focal_tversky: gamma must be > 0, got {gamma}.")
  index = _tversky_index(
    logits, labels, mask, alpha, beta, smooth, "focal_tversky"
  )
  per_class = _safe_power(1.0 - _select(index, include_background), 1 / gamma)
  return jnp.mean(per_class, axis=-1)


def generalized_dice(
  logits: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  mask: jax.typing.ArrayLike | None = None,
  *,
  include_background: bool = True,
  smooth: float = 1e-5,
) -> jax.Array:
  r"""Generalised Dice loss per example (Sudre et al., 2017).

  .. math::
    \ell = 1 - \frac{2 \sum_{c \in K} w_c \sum_i p_{i,c} t_{i,c} + s}
      {\sum_{c \in K} w_c \sum_i (p_{i,c} + t_{i,c}) + s}, \qquad
    w_c \propto \frac{1}{(\sum_i t_{i,c})^2}

  summing over the valid voxels of one example: each class counts in
  inverse proportion to its squared volume, so small structures weigh as
  much as large ones. Absent classes (`sum_i t_{i,c} = 0`, infinite
  weight) take the largest weight of the present classes, as in MONAI's
  `GeneralizedDiceLoss`, so predicting them is still penalised; if no
  class of `K` is present, all weights are equal. The weights are then
  normalised to sum to 1 (the ratio does not depend on their scale, but
  the smoothing `s` does) and carry no gradient. The loss lies in
  `[0, 1]` and is ~0 for a perfect prediction.

  Example:

    >>> labels = jnp.array([[[0, 0, 0], [0, 0, 1]]])
    >>> generalized_dice(30.0 * jax.nn.one_hot(labels, 2), labels)
    Array([0.], dtype=float32)

  Reference: C. H. Sudre, W. Li, T. Vercauteren, S. Ourselin, M. J.
  Cardoso. "Generalised Dice overlap as a deep learning loss function for
  highly unbalanced segmentations". DLMIA 2017.
  https://arxiv.org/abs/1707.03237

  Args:
    logits: `f32[B, *S, C]` unnormalised scores.
    labels: `int[B, *S]` class ids in `[0, C)` (any value where masked).
    mask: optional `[B, *S]`, nonzero where the voxel counts.
    include_background: whether class 0 is one of the classes `K` (the
      paper includes it).
    smooth: additive smoothing `s > 0`.

  Returns:
    `f32[B]` per-example loss.
  """
  logits, labels, mask = _prepare(logits, labels, mask, "generalized_dice")
  _check_classes(logits, include_background, "generalized_dice")
  probs, targets = _probs_and_targets(logits, labels, mask)
  intersection, pred_sum, target_sum = (
    _select(x, include_background) for x in _class_sums(probs, targets)
  )
  present = target_sum > 0
  inverse = jnp.where(present, 1.0 / jnp.where(present, target_sum, 1.0), 0.0)
  weights = inverse**2
  largest = jnp.max(weights, axis=-1, keepdims=True)
  weights = jnp.where(present, weights, largest)
  weights = jnp.where(largest > 0, weights, 1.0)  # No class present.
  weights = jax.lax.stop_gradient(
    weights / jnp.sum(weights, axis=-1, keepdims=True)
  )
  numerator = 2.0 * jnp.sum(weights * intersection, axis=-1) + smooth
  denominator = jnp.sum(weights * (pred_sum + target_sum), axis=-1) + smooth
  return 1.0 - numerator / denominator
