"""Segmentation metrics.

`overlap`: per-case, per-class confusion counts on device and Dice / IoU /
sensitivity / specificity / precision / volume similarity from them on the
host. `surface`: HD95, Hausdorff, average symmetric surface distance and
normalised surface Dice on the host, with the voxel spacing.
"""

from medseg_jax.metrics.overlap import confusion_counts
from medseg_jax.metrics.overlap import dice_from_counts
from medseg_jax.metrics.overlap import scores_from_counts
from medseg_jax.metrics.surface import SURFACE_KEYS
from medseg_jax.metrics.surface import surface_distances
from medseg_jax.metrics.surface import surface_scores
from medseg_jax.metrics.surface import surface_scores_batch

__all__ = [
  "SURFACE_KEYS",
  "confusion_counts",
  "dice_from_counts",
  "scores_from_counts",
  "surface_distances",
  "surface_scores",
  "surface_scores_batch",
]
