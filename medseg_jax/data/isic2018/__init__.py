"""The `isic2018` TFDS dataset; importing registers the builder."""

from medseg_jax.data.isic2018.isic2018 import CHANNEL_NAMES
from medseg_jax.data.isic2018.isic2018 import CLASS_NAMES
from medseg_jax.data.isic2018.isic2018 import FOLDERS
from medseg_jax.data.isic2018.isic2018 import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.isic2018.isic2018 import URLS
from medseg_jax.data.isic2018.isic2018 import Isic2018
from medseg_jax.data.isic2018.isic2018 import Isic2018Config
from medseg_jax.data.isic2018.isic2018 import find_cases

DATASET_SPECS = Isic2018.dataset_specs()
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
