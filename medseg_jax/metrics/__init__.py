"""Segmentation metrics.

`overlap`: per-case, per-class confusion counts on device and Dice / IoU /
sensitivity / specificity / precision from them on the host.
"""

from medseg_jax.metrics.overlap import confusion_counts
from medseg_jax.metrics.overlap import dice_from_counts
from medseg_jax.metrics.overlap import scores_from_counts

__all__ = ["confusion_counts", "dice_from_counts", "scores_from_counts"]
