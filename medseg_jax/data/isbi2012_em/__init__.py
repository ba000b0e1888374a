"""The `isbi2012_em` TFDS dataset; importing registers the builder."""

from medseg_jax.data.isbi2012_em.isbi2012_em import CLASS_NAMES
from medseg_jax.data.isbi2012_em.isbi2012_em import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.isbi2012_em.isbi2012_em import SPLIT_SLICES
from medseg_jax.data.isbi2012_em.isbi2012_em import Isbi2012Em
from medseg_jax.data.spec import DatasetSpec

DATASET_SPECS = {
  "isbi2012_em": DatasetSpec(
    tfds_name="isbi2012_em",
    num_classes=len(CLASS_NAMES),
    class_names=CLASS_NAMES,
    spatial_dims=2,
    num_channels=1,
    splits=("train", "validation"),
    needs_manual_dir=True,
  )
}
BUILDER = Isbi2012Em

__all__ = [
  "BUILDER",
  "DATASET_SPECS",
  "CLASS_NAMES",
  "MANUAL_DOWNLOAD_INSTRUCTIONS",
  "SPLIT_SLICES",
  "Isbi2012Em",
]
