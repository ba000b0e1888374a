"""What every classical baseline shares: intensity, seeds, cluster -> class.

A baseline segments one case at a time on the host (NumPy, scikit-image).
Its `predict(image)` takes a channels-last `f32[*S, C]` image and returns
`i32[*S]` class ids in `[0, num_classes)`, like the argmax of a deep
model's logits, so the same metrics score both.

Pipeline of `predict`:

1. Intensity: the image's channels are averaged (or one is picked with
   `channel`), cast to float64 and optionally smoothed with a Gaussian of
   `sigma` voxels.
2. Clustering: the method (`cluster`) splits the voxels into
   `num_clusters` groups numbered by intensity, 0 the darkest.
3. Mapping: cluster ids become class ids, by one of two documented rules:

   * intensity order (default): cluster `k` is class `k`, so class 0 is the
     darkest structure; with `invert=True` cluster `k` is class
     `num_clusters - 1 - k`, for a structure darker than its background
     (e.g. ISBI 2012 membranes, class 1, are dark). Needs
     `num_clusters == num_classes`.
   * fitted (`fit_mapping=True`): `fit(images, labels)` clusters every
     training case and counts, over all training voxels, how often cluster
     `k` meets label `c` (`votes[k, c]`). With `mapping_rule="dice"`
     (default) the mapping is the one, among all `num_classes **
     num_clusters`, with the best mean Dice over classes on the training
     voxels pooled; with `mapping_rule="majority"` each cluster goes to the
     label it overlaps most. Majority vote fails on thin or small
     structures: a dark cluster that is 40 % membrane and 60 % interior
     votes "interior", leaving no cluster for the membrane, which the Dice
     rule avoids. A cluster that never occurred in training keeps its
     intensity-order class (clipped to `num_classes - 1`). `num_clusters`
     may differ from `num_classes`, e.g. 3 clusters for a 2-class problem.

Seeds (markers) for the seeded methods come from Otsu's thresholds: among
the voxels that (multi-)Otsu puts in cluster `k`, the `seed_fraction`
farthest in intensity from the thresholds around `k` are its seeds (the
"confident" quantile of that cluster).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from typing import Self

import numpy as np
from scipy import ndimage
from skimage import filters


def intensity(
  image: np.ndarray, channel: int | None = None, sigma: float = 0.0
) -> np.ndarray:
  """One scalar intensity per voxel.

  Args:
    image: `f[*S, C]`, channels-last.
    channel: the channel to use; None averages all channels.
    sigma: standard deviation in voxels of a Gaussian pre-smoothing over the
      spatial axes; 0 for none.

  Returns:
    `f64[*S]`.
  """
  image = np.asarray(image)
  if image.ndim < 3:
    raise ValueError(
      f"image must be channels-last f32[*S, C] with 2 or 3 spatial axes, "
      f"got shape {image.shape}."
    )
  if channel is None:
    x = image.mean(axis=-1, dtype=np.float64)
  else:
    x = image[..., channel].astype(np.float64)
  if sigma > 0:
    x = ndimage.gaussian_filter(x, sigma)
  return x


def otsu_thresholds(
  x: np.ndarray, num_clusters: int, nbins: int = 256
) -> np.ndarray:
  """Otsu's (multi-)thresholds of `x`, ascending.

  Uses `skimage.filters.threshold_otsu` for two clusters and
  `threshold_multiotsu` for more. Multi-Otsu searches every combination of
  thresholds, so its cost grows like `nbins ** (K - 1)`: at 256 bins about
  0.07 s for K=4 but 4 s for K=5 (per call, on one CPU core); use
  `nbins=64` from K=5 on. An image with too few distinct values for
  that many clusters gets thresholds halfway between its values, padded
  with `+inf` (the brightest clusters then stay empty).

  Args:
    x: `f64[*S]` intensities.
    num_clusters: number of clusters `K >= 2`.
    nbins: histogram bins.

  Returns:
    `f64[K - 1]`, ascending.
  """
  values = np.unique(x)
  if len(values) <= num_clusters:
    mids = (values[:-1] + values[1:]) / 2
    pad = np.full(num_clusters - 1 - len(mids), np.inf)
    return np.concatenate([mids, pad])
  if num_clusters == 2:
    return np.array([filters.threshold_otsu(x, nbins=nbins)], np.float64)
  return np.asarray(
    filters.threshold_multiotsu(x, classes=num_clusters, nbins=nbins),
    np.float64,
  )


def digitize(x: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """`i32[*S]` cluster ids: the number of thresholds strictly below `x`.

  This follows `threshold_otsu`'s convention that the foreground is
  `x > threshold`.
  """
  return np.searchsorted(thresholds, x, side="left").astype(np.int32)


def seed_markers(
  x: np.ndarray, thresholds: np.ndarray, seed_fraction: float
) -> np.ndarray:
  """Markers from confident intensity quantiles of Otsu's clusters.

  Args:
    x: `f64[*S]` intensities.
    thresholds: `f64[K - 1]` ascending thresholds (`otsu_thresholds`).
    seed_fraction: in `(0, 1]`; per cluster, the share of its voxels, the
      farthest from the thresholds that bound it, that become seeds.

  Returns:
    `i32[*S]`: 0 for unlabelled voxels, `k + 1` for seeds of cluster `k`.
  """
  if not 0 < seed_fraction <= 1:
    raise ValueError(f"seed_fraction must be in (0, 1], got {seed_fraction}.")
  bins = digitize(x, thresholds)
  finite = np.where(np.isfinite(thresholds), thresholds, np.nan)
  # Distance to the nearest bounding threshold; a missing bound (outer
  # clusters) or an infinite one counts as as far as can be (the largest
  # float rather than inf, so that quantiles stay defined).
  below = np.concatenate([[np.nan], finite])[bins]
  above = np.concatenate([finite, [np.nan]])[bins]
  distance = np.fmin(np.abs(x - below), np.abs(above - x))
  distance = np.nan_to_num(distance, nan=np.finfo(np.float64).max)
  markers = np.zeros(x.shape, np.int32)
  for k in range(len(thresholds) + 1):
    members = bins == k
    if not members.any():
      continue
    cut = np.quantile(distance[members], 1.0 - seed_fraction)
    markers[members & (distance >= cut)] = k + 1
  return markers


MAPPING_RULES = ("dice", "majority")
# Largest number of candidate mappings the Dice rule enumerates.
MAX_MAPPINGS = 2**20


def dice_optimal_mapping(votes: np.ndarray) -> np.ndarray:
  """The cluster -> class mapping with the best mean Dice over classes.

  Args:
    votes: `int[K, C]`, how many training voxels of cluster `k` carry label
      `c`.

  Returns:
    `i32[K]`, the class of each cluster. Dice of a class absent from both
    the labels and the mapped prediction counts as 1 (as in
    `metrics.overlap`). Ties go to the first mapping in lexicographic order.
  """
  num_clusters, num_classes = votes.shape
  if num_classes**num_clusters > MAX_MAPPINGS:
    raise ValueError(
      f"{num_classes}**{num_clusters} candidate mappings are too many for "
      'mapping_rule="dice"; use "majority" or fewer clusters.'
    )
  candidates = np.array(
    list(itertools.product(range(num_classes), repeat=num_clusters))
  )  # [N, K]
  onehot = candidates[..., None] == np.arange(num_classes)  # [N, K, C]
  votes = votes.astype(np.float64)
  tp = np.einsum("nkc,kc->nc", onehot, votes)
  predicted = np.einsum("nkc,k->nc", onehot, votes.sum(axis=1))
  den = predicted + votes.sum(axis=0)
  dice = np.ones_like(den)
  np.divide(2 * tp, den, out=dice, where=den > 0)
  return candidates[np.argmax(dice.mean(axis=1))].astype(np.int32)


@dataclasses.dataclass(kw_only=True)
class ClusterBaseline:
  """Base of the baselines: intensity -> clusters -> class ids.

  Subclasses implement `cluster`. Attributes ending in `_` are set by
  `fit`.

  Attributes:
    num_classes: number of classes, background included.
    num_clusters: number of intensity clusters; None means `num_classes`.
      Must equal `num_classes` unless `fit_mapping`.
    invert: with the intensity-order mapping, class 0 is the brightest
      cluster instead of the darkest. Ignored by a fitted mapping.
    fit_mapping: learn the cluster -> class mapping from the cases given
      to `fit` (see the module docstring); `predict` then needs `fit`
      first.
    mapping_rule: "dice" or "majority", how `fit` picks the mapping.
    channel: image channel to segment; None averages the channels.
    sigma: Gaussian pre-smoothing in voxels; 0 for none.
    mapping_: `i32[num_clusters]`, class id of each cluster, set by `fit`.
  """

  num_classes: int = 2
  num_clusters: int | None = None
  invert: bool = False
  fit_mapping: bool = False
  mapping_rule: str = "dice"
  channel: int | None = None
  sigma: float = 0.0
  mapping_: np.ndarray | None = dataclasses.field(
    default=None, init=False, repr=False
  )

  def __post_init__(self):
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be >= 2, got {self.num_classes}.")
    if self.num_clusters is None:
      self.num_clusters = self.num_classes
    if self.num_clusters < 2:
      raise ValueError(f"num_clusters must be >= 2, got {self.num_clusters}.")
    if self.num_clusters != self.num_classes and not self.fit_mapping:
      raise ValueError(
        f"num_clusters={self.num_clusters} differs from num_classes="
        f"{self.num_classes}: set fit_mapping=True to learn the mapping."
      )
    if self.mapping_rule not in MAPPING_RULES:
      raise ValueError(
        f"mapping_rule must be one of {MAPPING_RULES}, got "
        f"{self.mapping_rule!r}."
      )

  def cluster(self, x: np.ndarray) -> np.ndarray:
    """Clusters one case's intensities.

    Args:
      x: `f64[*S]` intensities (after `intensity`).

    Returns:
      `i32[*S]` cluster ids in `[0, num_clusters)`, ordered by intensity (0
      the darkest).
    """
    raise NotImplementedError

  def clusters(self, image: np.ndarray) -> np.ndarray:
    """`i32[*S]` cluster ids of a `f32[*S, C]` image (before mapping)."""
    x = intensity(image, self.channel, self.sigma)
    return self.cluster(x).astype(np.int32)

  def _intensity_mapping(self) -> np.ndarray:
    order = np.arange(self.num_clusters)
    if self.invert:
      order = order[::-1]
    return np.minimum(order, self.num_classes - 1).astype(np.int32)

  def fit(
    self, images: Iterable[np.ndarray], labels: Iterable[np.ndarray]
  ) -> Self:
    """Learns the cluster -> class mapping, if `fit_mapping`; else no-op.

    Args:
      images: training cases, each `f32[*S, C]`.
      labels: their ground truth, each `int[*S]`; values outside
        `[0, num_classes)` are ignored.

    Returns:
      self.
    """
    if not self.fit_mapping:
      return self
    votes = np.zeros((self.num_clusters, self.num_classes), np.int64)
    num_cases = 0
    for image, label in zip(images, labels, strict=True):
      label = np.asarray(label)
      found = self.clusters(image)
      if found.shape != label.shape:
        raise ValueError(
          f"label shape {label.shape} does not match the image's spatial "
          f"shape {found.shape}."
        )
      valid = (label >= 0) & (label < self.num_classes)
      pairs = found[valid].astype(np.int64) * self.num_classes + label[valid]
      votes += np.bincount(pairs, minlength=votes.size).reshape(votes.shape)
      num_cases += 1
    if num_cases == 0:
      raise ValueError("fit needs at least one training case.")
    fallback = np.minimum(np.arange(self.num_clusters), self.num_classes - 1)
    seen = votes.sum(axis=1) > 0
    if self.mapping_rule == "dice":
      learned = dice_optimal_mapping(votes)
    else:
      learned = votes.argmax(axis=1)
    self.mapping_ = np.where(seen, learned, fallback).astype(np.int32)
    return self

  def predict(self, image: np.ndarray) -> np.ndarray:
    """Segments one case.

    Args:
      image: `f32[*S, C]`, channels-last, 2 or 3 spatial axes.

    Returns:
      `i32[*S]` class ids in `[0, num_classes)`.

    Raises:
      RuntimeError: if `fit_mapping` and `fit` has not been called.
    """
    if self.fit_mapping:
      if self.mapping_ is None:
        raise RuntimeError(
          f"{type(self).__name__} has fit_mapping=True: call fit(images, "
          "labels) before predict."
        )
      mapping = self.mapping_
    else:
      mapping = self._intensity_mapping()
    return mapping[self.clusters(image)]
