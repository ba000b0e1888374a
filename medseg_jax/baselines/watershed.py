"""Marker-based watershed on the gradient magnitude.

The image's gradient magnitude (Sobel, `skimage.filters.sobel`, any number
of spatial axes) is flooded from markers (`skimage.segmentation.watershed`);
each voxel joins the marker whose basin reaches it first, so region borders
settle on intensity edges. Markers are the confident intensity quantiles of
Otsu's clusters (`base.seed_markers`): per cluster, the `seed_fraction` of
its voxels farthest from Otsu's thresholds.

  >>> ws = Watershed(num_classes=3, sigma=1.0)
  >>> pred = ws.predict(volume)  # f32[D, H, W, 1] -> i32[D, H, W]

Reference: S. Beucher and F. Meyer, "The morphological approach to
segmentation: the watershed transformation", 1993.
"""

import dataclasses

import numpy as np
from skimage import filters
from skimage import segmentation

from medseg_jax.baselines import base


@dataclasses.dataclass(kw_only=True)
class Watershed(base.ClusterBaseline):
  """Seeded watershed (see `base.ClusterBaseline` for the shared
  attributes).

  Attributes:
    seed_fraction: per Otsu cluster, the share of its voxels used as
      markers, the most confident first.
    compactness: `watershed`'s compactness; 0 is the classic watershed,
      larger values give more regular regions.
    nbins: histogram bins for the Otsu thresholds.
  """

  seed_fraction: float = 0.3
  compactness: float = 0.0
  nbins: int = 256

  def cluster(self, x: np.ndarray) -> np.ndarray:
    thresholds = base.otsu_thresholds(x, self.num_clusters, self.nbins)
    markers = base.seed_markers(x, thresholds, self.seed_fraction)
    if len(np.unique(markers[markers > 0])) < 2:
      return base.digitize(x, thresholds)  # Nothing to compete.
    gradient = filters.sobel(x)
    regions = segmentation.watershed(
      gradient, markers, compactness=self.compactness
    )
    return (regions - 1).astype(np.int32)
