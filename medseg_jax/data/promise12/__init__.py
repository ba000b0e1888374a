"""The `promise12` TFDS dataset; importing registers the builder."""

from medseg_jax.data.promise12.promise12 import CHANNEL_NAMES
from medseg_jax.data.promise12.promise12 import CLASS_NAMES
from medseg_jax.data.promise12.promise12 import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.promise12.promise12 import SPLIT_CASES
from medseg_jax.data.promise12.promise12 import Promise12
from medseg_jax.data.promise12.promise12 import find_cases
from medseg_jax.data.spec import DatasetSpec

DATASET_SPECS = {
  "promise12": DatasetSpec(
    tfds_name="promise12",
    num_classes=len(CLASS_NAMES),
    class_names=CLASS_NAMES,
    spatial_dims=3,
    num_channels=len(CHANNEL_NAMES),
    splits=tuple(SPLIT_CASES),
    needs_manual_dir=True,
  )
}
BUILDER = Promise12

__all__ = [
  "BUILDER",
  "DATASET_SPECS",
  "CHANNEL_NAMES",
  "CLASS_NAMES",
  "MANUAL_DOWNLOAD_INSTRUCTIONS",
  "SPLIT_CASES",
  "Promise12",
  "find_cases",
]
