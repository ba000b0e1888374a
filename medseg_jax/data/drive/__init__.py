"""The `drive` TFDS dataset; importing registers the builder."""

from medseg_jax.data.drive.drive import CHANNEL_NAMES
from medseg_jax.data.drive.drive import CLASS_NAMES
from medseg_jax.data.drive.drive import EXTRA_MASKS
from medseg_jax.data.drive.drive import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.drive.drive import SPLIT_NUMBERS
from medseg_jax.data.drive.drive import Drive
from medseg_jax.data.drive.drive import DriveCase
from medseg_jax.data.drive.drive import find_cases
from medseg_jax.data.drive.drive import make_example

DATASET_SPECS = Drive.dataset_specs()
BUILDER = Drive

__all__ = [
  "BUILDER",
  "CHANNEL_NAMES",
  "CLASS_NAMES",
  "DATASET_SPECS",
  "EXTRA_MASKS",
  "MANUAL_DOWNLOAD_INSTRUCTIONS",
  "SPLIT_NUMBERS",
  "Drive",
  "DriveCase",
  "find_cases",
  "make_example",
]
