"""The `synthetic_phantoms` TFDS dataset; importing registers the builder."""

from medseg_jax.data.synthetic_phantoms.synthetic_phantoms import SPLIT_SIZES_2D
from medseg_jax.data.synthetic_phantoms.synthetic_phantoms import SPLIT_SIZES_3D
from medseg_jax.data.synthetic_phantoms.synthetic_phantoms import (
  SyntheticPhantoms,
)
from medseg_jax.data.synthetic_phantoms.synthetic_phantoms import (
  SyntheticPhantomsConfig,
)

DATASET_SPECS = SyntheticPhantoms.dataset_specs()
BUILDER = SyntheticPhantoms

__all__ = [
  "BUILDER",
  "DATASET_SPECS",
  "SPLIT_SIZES_2D",
  "SPLIT_SIZES_3D",
  "SyntheticPhantoms",
  "SyntheticPhantomsConfig",
]
