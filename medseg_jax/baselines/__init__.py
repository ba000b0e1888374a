"""Classical segmentation baselines, scored by the same metrics as models.

Each baseline is a small dataclass with `fit(images, labels) -> self` (a
no-op unless it learns its cluster -> class mapping) and
`predict(image: f32[*S, C]) -> i32[*S]`, segmenting one case on the host
with scikit-image. `get_baseline` resolves a name through `BASELINES`:

  >>> otsu = get_baseline("otsu", num_classes=2, invert=True)
  >>> pred = otsu.fit(train_images, train_labels).predict(image)

How clusters become classes (intensity order, `invert`, or a mapping fitted
on training labels) is documented in `medseg_jax.baselines.base`.
"""

from collections.abc import Callable

from medseg_jax.baselines.active_contour import MorphologicalChanVese
from medseg_jax.baselines.base import ClusterBaseline
from medseg_jax.baselines.otsu import Otsu
from medseg_jax.baselines.random_walker import RandomWalker
from medseg_jax.baselines.region_growing import RegionGrowing
from medseg_jax.baselines.watershed import Watershed

BASELINES: dict[str, Callable[..., ClusterBaseline]] = {
  "otsu": Otsu,  # Otsu / multi-Otsu thresholds.
  "watershed": Watershed,  # Seeded watershed on the gradient magnitude.
  "region_growing": RegionGrowing,  # Tolerance flood fill from seeds.
  "random_walker": RandomWalker,  # Grady's random walker from seeds.
  "active_contour": MorphologicalChanVese,  # Binary problems only.
}


def get_baseline(name: str, **kwargs) -> ClusterBaseline:
  """Builds the baseline registered as `name`.

  Args:
    name: a key of `BASELINES`.
    **kwargs: dataclass fields, e.g. `num_classes=3, sigma=1.0`.

  Returns:
    The baseline, unfitted.

  Raises:
    ValueError: if `name` is not registered; the message lists valid names.
  """
  try:
    constructor = BASELINES[name]
  except KeyError:
    raise ValueError(
      f"Unknown baseline {name!r}; valid names: {sorted(BASELINES)}."
    ) from None
  return constructor(**kwargs)


__all__ = [
  "BASELINES",
  "ClusterBaseline",
  "MorphologicalChanVese",
  "Otsu",
  "RandomWalker",
  "RegionGrowing",
  "Watershed",
  "get_baseline",
]
