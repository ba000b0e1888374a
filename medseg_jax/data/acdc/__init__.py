"""The `acdc` TFDS dataset; importing registers the builder."""

from medseg_jax.data.acdc.acdc import CHANNEL_NAMES
from medseg_jax.data.acdc.acdc import CLASS_NAMES
from medseg_jax.data.acdc.acdc import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.acdc.acdc import SPLITS
from medseg_jax.data.acdc.acdc import Acdc
from medseg_jax.data.acdc.acdc import AcdcConfig
from medseg_jax.data.acdc.acdc import find_frames
from medseg_jax.data.acdc.acdc import find_root

DATASET_SPECS = Acdc.dataset_specs()
BUILDER = Acdc

__all__ = [
  "BUILDER",
  "DATASET_SPECS",
  "CHANNEL_NAMES",
  "CLASS_NAMES",
  "MANUAL_DOWNLOAD_INSTRUCTIONS",
  "SPLITS",
  "Acdc",
  "AcdcConfig",
  "find_frames",
  "find_root",
]
