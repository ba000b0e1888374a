"""The `lesjak_ms` TFDS dataset; importing registers the builder."""

from medseg_jax.data.lesjak_ms.lesjak_ms import CHANNEL_NAMES
from medseg_jax.data.lesjak_ms.lesjak_ms import CLASS_NAMES
from medseg_jax.data.lesjak_ms.lesjak_ms import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.lesjak_ms.lesjak_ms import LesjakMs
from medseg_jax.data.lesjak_ms.lesjak_ms import find_cases

DATASET_SPECS = LesjakMs.dataset_specs()
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
