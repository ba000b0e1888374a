"""Otsu thresholding: the intensity histogram split into classes.

Two classes use Otsu's threshold (`skimage.filters.threshold_otsu`), more
use multi-Otsu (`threshold_multiotsu`, Liao et al. 2001), which picks the
thresholds that maximise the between-class variance of the histogram. Works
on any number of spatial axes. Clusters are numbered by intensity; see
`base` for the mapping to classes (`invert=True` for a dark structure).

  >>> otsu = Otsu(num_classes=2, invert=True)  # dark membranes = class 1
  >>> pred = otsu.predict(image)  # image: f32[H, W, 1] -> i32[H, W]

Reference: N. Otsu, "A threshold selection method from gray-level
histograms", IEEE Trans. SMC 9(1), 1979.
"""

import dataclasses

import numpy as np

from medseg_jax.baselines import base


@dataclasses.dataclass(kw_only=True)
class Otsu(base.ClusterBaseline):
  """Otsu / multi-Otsu thresholding (see `base.ClusterBaseline` for the
  shared attributes).

  Attributes:
    nbins: histogram bins for the threshold search.
  """

  nbins: int = 256

  def cluster(self, x: np.ndarray) -> np.ndarray:
    thresholds = base.otsu_thresholds(x, self.num_clusters, self.nbins)
    return base.digitize(x, thresholds)
