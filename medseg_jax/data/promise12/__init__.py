"""The `promise12` TFDS dataset; importing registers the builder."""

from medseg_jax.data.promise12.promise12 import CHANNEL_NAMES
from medseg_jax.data.promise12.promise12 import CLASS_NAMES
from medseg_jax.data.promise12.promise12 import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.promise12.promise12 import SPLIT_CASES
from medseg_jax.data.promise12.promise12 import Promise12
from medseg_jax.data.promise12.promise12 import find_cases

DATASET_SPECS = Promise12.dataset_specs()
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
