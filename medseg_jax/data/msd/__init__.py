"""The `msd` TFDS dataset (ten configs); importing registers the builder."""

from medseg_jax.data.msd.msd import BUILDER_CONFIGS
from medseg_jax.data.msd.msd import CONFIGS
from medseg_jax.data.msd.msd import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.msd.msd import SPLITS
from medseg_jax.data.msd.msd import Msd
from medseg_jax.data.msd.msd import MsdConfig
from medseg_jax.data.msd.msd import find_cases
from medseg_jax.data.msd.msd import read_dataset_json
from medseg_jax.data.msd.msd import split_cases

DATASET_SPECS = Msd.dataset_specs()
BUILDER = Msd

__all__ = [
  "BUILDER",
  "BUILDER_CONFIGS",
  "CONFIGS",
  "DATASET_SPECS",
  "MANUAL_DOWNLOAD_INSTRUCTIONS",
  "SPLITS",
  "Msd",
  "MsdConfig",
  "find_cases",
  "read_dataset_json",
  "split_cases",
]
