"""The `isbi2012_em` TFDS dataset; importing registers the builder."""

from medseg_jax.data.isbi2012_em.isbi2012_em import CLASS_NAMES
from medseg_jax.data.isbi2012_em.isbi2012_em import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.isbi2012_em.isbi2012_em import SPLIT_SLICES
from medseg_jax.data.isbi2012_em.isbi2012_em import Isbi2012Em

DATASET_SPECS = Isbi2012Em.dataset_specs()
BUILDER = Isbi2012Em

__all__ = [
  "BUILDER",
  "DATASET_SPECS",
  "CLASS_NAMES",
  "MANUAL_DOWNLOAD_INSTRUCTIONS",
  "SPLIT_SLICES",
  "Isbi2012Em",
]
