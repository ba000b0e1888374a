"""The `isic2018` TFDS dataset; importing registers the builder."""

from medseg_jax.data.isic2018.isic2018 import CHANNEL_NAMES
from medseg_jax.data.isic2018.isic2018 import CLASS_NAMES
from medseg_jax.data.isic2018.isic2018 import FOLDERS
from medseg_jax.data.isic2018.isic2018 import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.isic2018.isic2018 import URLS
from medseg_jax.data.isic2018.isic2018 import Isic2018
from medseg_jax.data.isic2018.isic2018 import Isic2018Config
from medseg_jax.data.isic2018.isic2018 import find_cases
from medseg_jax.data.spec import DatasetSpec

DATASET_SPECS = {
  f"isic2018/{config}": DatasetSpec(
    tfds_name=f"isic2018/{config}",
    num_classes=len(CLASS_NAMES),
    class_names=CLASS_NAMES,
    spatial_dims=2,
    num_channels=len(CHANNEL_NAMES),
    splits=("train", "validation", "test"),
    needs_manual_dir=False,
  )
  for config in ("native", "512")
}
BUILDER = Isic2018

__all__ = [
  "BUILDER",
  "CHANNEL_NAMES",
  "CLASS_NAMES",
  "DATASET_SPECS",
  "FOLDERS",
  "MANUAL_DOWNLOAD_INSTRUCTIONS",
  "URLS",
  "Isic2018",
  "Isic2018Config",
  "find_cases",
]
