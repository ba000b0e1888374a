"""Overlap metrics: confusion counts on device, scores on the host.

Evaluation accumulates sufficient statistics and divides once. On device,
`confusion_counts` turns integer predictions and labels into per-case,
per-class counts of true/false positives/negatives (jittable, shardable over
the batch, padded examples removed with `mask`). On the host,
`scores_from_counts` turns counts into Dice, IoU, sensitivity, specificity,
precision and volume similarity in float64. `dice_from_counts` is the
jittable Dice for use inside a train or eval step.

Empty-set policy
----------------

Per case and class, with `tp, fp, fn, tn` the counts over valid voxels:

==============================  =====  =====  ===========  =========  =====
case                            Dice   IoU    sensitivity  precision  VS
==============================  =====  =====  ===========  =========  =====
truth empty, prediction empty   1      1      NaN          NaN        1
truth empty, prediction not     0      0      NaN          0          0
truth not, prediction empty     0      0      0            NaN        0
both non-empty                  ratio  ratio  ratio        ratio      ratio
==============================  =====  =====  ===========  =========  =====

Rule: every ratio is NaN when its denominator is zero ("not defined"),
except Dice, IoU and volume similarity (VS), which are 1 when
`tp + fp + fn == 0` (nothing to find and nothing found is a perfect answer;
this is what e.g. the Medical Segmentation Decathlon and nnU-Net's
`ignore_empty=False` do). Specificity `tn / (tn + fp)` is NaN only when
the case has no negative voxel for the class (the class fills every valid
voxel). Average with `np.nanmean` and
report how many cases were defined.

Formulas:

* Dice = 2 tp / (2 tp + fp + fn)
* IoU (Jaccard) = tp / (tp + fp + fn)
* sensitivity (recall) = tp / (tp + fn)
* specificity = tn / (tn + fp)
* precision (positive predictive value) = tp / (tp + fp)
* volume similarity = 1 - |fp - fn| / (2 tp + fp + fn)
  = 1 - |V_pred - V_true| / (V_pred + V_true), with V the voxel counts. It
  compares volumes only: a prediction of the right size in the wrong place
  scores 1 (Taha and Hanbury, "Metrics for evaluating 3D medical image
  segmentation", BMC Medical Imaging 2015).

Surface metrics (Hausdorff distance, ASSD, normalised surface Dice) are in
`medseg_jax.metrics.surface`.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

COUNT_KEYS = ("tp", "fp", "fn", "tn")
SCORE_KEYS = (
  "dice",
  "iou",
  "sensitivity",
  "specificity",
  "precision",
  "volume_similarity",
)


def confusion_counts(
  pred: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  num_classes: int,
  mask: jax.typing.ArrayLike | None = None,
) -> dict[str, jax.Array]:
  """Per-case, per-class confusion counts of a hard segmentation.

  A voxel is a positive of class `c` in the prediction if `pred == c` and in
  the ground truth if `labels == c`. Values outside `[0, num_classes)` belong
  to no class (they count as negatives of every class); mask them out if
  they mean "ignore".

  Counts are int32, so a case may have at most 2**31 - 1 valid voxels (e.g.
  a 1290^3 volume); larger cases must be split and the counts summed in
  int64 on the host.

  Example:

    >>> pred = jnp.array([[0, 1, 1, 2]])    # [B=1, W=4]
    >>> labels = jnp.array([[0, 1, 2, 2]])
    >>> counts = confusion_counts(pred, labels, num_classes=3)
    >>> counts["tp"], counts["fp"], counts["fn"]
    (Array([[1, 1, 1]], dtype=int32), Array([[0, 1, 0]], dtype=int32),
     Array([[0, 0, 1]], dtype=int32))

  Args:
    pred: `int[B, *S]` predicted class ids (e.g. `argmax` of the logits).
    labels: `int[B, *S]` ground-truth class ids.
    num_classes: number of classes `C`, background included.
    mask: optional `[B, *S]`, nonzero where the voxel counts. An all-zero
      mask (a padded example) gives all-zero counts.

  Returns:
    Dict with keys `tp`, `fp`, `fn`, `tn`, each `i32[B, C]`.

  Raises:
    ValueError: on mismatched shapes or non-integer inputs.
  """
  pred = jnp.asarray(pred)
  labels = jnp.asarray(labels)
  if pred.shape != labels.shape or pred.ndim < 2:
    raise ValueError(
      "confusion_counts: pred and labels must both be int[B, *S] with the "
      f"same shape, got {pred.shape} and {labels.shape}."
    )
  for name, x in (("pred", pred), ("labels", labels)):
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(
        f"confusion_counts: {name} must hold integer class ids, got dtype "
        f"{x.dtype} (take the argmax of logits first)."
      )
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  axes = tuple(range(1, pred.ndim))
  classes = jnp.arange(num_classes, dtype=jnp.int32)
  p = pred[..., None] == classes  # bool[B, *S, C]
  g = labels[..., None] == classes
  if mask is None:
    valid = jnp.ones(pred.shape, dtype=bool)
  else:
    mask = jnp.asarray(mask)
    if mask.shape != pred.shape:
      raise ValueError(
        f"confusion_counts: mask must have shape {pred.shape}, got "
        f"{mask.shape}."
      )
    valid = mask != 0
  p = p & valid[..., None]
  g = g & valid[..., None]
  tp = jnp.sum(p & g, axis=axes, dtype=jnp.int32)
  num_pred = jnp.sum(p, axis=axes, dtype=jnp.int32)
  num_true = jnp.sum(g, axis=axes, dtype=jnp.int32)
  num_valid = jnp.sum(valid, axis=axes, dtype=jnp.int32)[:, None]
  fp = num_pred - tp
  fn = num_true - tp
  return {"tp": tp, "fp": fp, "fn": fn, "tn": num_valid - tp - fp - fn}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den, NaN where den == 0, without warnings."""
  out = np.full(np.broadcast(num, den).shape, np.nan)
  np.divide(num, den, out=out, where=den != 0)
  return out


def scores_from_counts(
  counts: Mapping[str, np.ndarray | jax.Array],
) -> dict[str, np.ndarray]:
  """Overlap scores from confusion counts, on the host, in float64.

  Follows the empty-set policy in the module docstring. Counts may have any
  leading shape (`[B, C]` per case, or summed over cases first for
  "global" scores); the scores have the same shape.

  Example:

    >>> counts = {"tp": np.array([[3, 0]]), "fp": np.array([[1, 0]]),
    ...           "fn": np.array([[0, 0]]), "tn": np.array([[4, 8]])}
    >>> scores = scores_from_counts(counts)
    >>> scores["dice"], scores["sensitivity"]
    (array([[0.85714286, 1.        ]]), array([[ 1., nan]]))

  Args:
    counts: dict with keys `tp`, `fp`, `fn`, `tn` of equal shape (e.g. the
      output of `confusion_counts`, moved to the host).

  Returns:
    Dict with the keys of `SCORE_KEYS` (`dice`, `iou`, `sensitivity`,
    `specificity`, `precision`, `volume_similarity`), each float64 with the
    counts' shape.
  """
  missing = [k for k in COUNT_KEYS if k not in counts]
  if missing:
    raise ValueError(f"scores_from_counts: counts lack keys {missing}.")
  tp, fp, fn, tn = (np.asarray(counts[k], np.float64) for k in COUNT_KEYS)
  if not tp.shape == fp.shape == fn.shape == tn.shape:
    raise ValueError(
      "scores_from_counts: counts must share one shape, got "
      f"{[np.shape(counts[k]) for k in COUNT_KEYS]}."
    )
  both_empty = (tp + fp + fn) == 0
  return {
    "dice": np.where(both_empty, 1.0, _ratio(2 * tp, 2 * tp + fp + fn)),
    "iou": np.where(both_empty, 1.0, _ratio(tp, tp + fp + fn)),
    "sensitivity": _ratio(tp, tp + fn),
    "specificity": _ratio(tn, tn + fp),
    "precision": _ratio(tp, tp + fp),
    "volume_similarity": np.where(
      both_empty, 1.0, 1.0 - _ratio(np.abs(fp - fn), 2 * tp + fp + fn)
    ),
  }


def dice_from_counts(counts: Mapping[str, jax.typing.ArrayLike]) -> jax.Array:
  """Jittable Dice from confusion counts, same policy as `scores_from_counts`.

  `Dice = 2 tp / (2 tp + fp + fn)`, and 1 when `tp + fp + fn == 0` (class
  absent from both ground truth and prediction). Computed in float32, which
  is exact for counts below 2**24 and within ~1e-7 relative above.

  Example:

    >>> counts = confusion_counts(pred, labels, num_classes=3)
    >>> dice = dice_from_counts(counts)  # f32[B, 3]

  Args:
    counts: dict with at least `tp`, `fp`, `fn`, integer arrays of equal
      shape, e.g. `i32[B, C]`.

  Returns:
    `f32` Dice with the counts' shape.
  """
  tp, fp, fn = (jnp.asarray(counts[k], jnp.float32) for k in ("tp", "fp", "fn"))
  den = 2.0 * tp + fp + fn
  return jnp.where(den > 0, 2.0 * tp / jnp.where(den > 0, den, 1.0), 1.0)
