"""The `lesjak_ms` TFDS dataset; importing registers the builder."""

from medseg_jax.data.lesjak_ms.lesjak_ms import CHANNEL_NAMES
from medseg_jax.data.lesjak_ms.lesjak_ms import CLASS_NAMES
from medseg_jax.data.lesjak_ms.lesjak_ms import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.lesjak_ms.lesjak_ms import LesjakMs
from medseg_jax.data.lesjak_ms.lesjak_ms import find_cases
from medseg_jax.data.spec import DatasetSpec

DATASET_SPECS = {
  "lesjak_ms": DatasetSpec(
    tfds_name="lesjak_ms",
    num_classes=len(CLASS_NAMES),
    class_names=CLASS_NAMES,
    spatial_dims=3,
    num_channels=len(CHANNEL_NAMES),
    splits=("train", "validation"),
    needs_manual_dir=False,
  )
}
BUILDER = LesjakMs

__all__ = [
  "BUILDER",
  "DATASET_SPECS",
  "CHANNEL_NAMES",
  "CLASS_NAMES",
  "MANUAL_DOWNLOAD_INSTRUCTIONS",
  "LesjakMs",
  "find_cases",
]
