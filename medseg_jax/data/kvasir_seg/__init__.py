"""The `kvasir_seg` TFDS dataset; importing registers the builder."""

from medseg_jax.data.kvasir_seg.kvasir_seg import CHANNEL_NAMES
from medseg_jax.data.kvasir_seg.kvasir_seg import CLASS_NAMES
from medseg_jax.data.kvasir_seg.kvasir_seg import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.kvasir_seg.kvasir_seg import URL
from medseg_jax.data.kvasir_seg.kvasir_seg import KvasirSeg
from medseg_jax.data.kvasir_seg.kvasir_seg import find_cases
from medseg_jax.data.kvasir_seg.kvasir_seg import split_cases

DATASET_SPECS = KvasirSeg.dataset_specs()
BUILDER = KvasirSeg

__all__ = [
  "BUILDER",
  "CHANNEL_NAMES",
  "CLASS_NAMES",
  "DATASET_SPECS",
  "MANUAL_DOWNLOAD_INSTRUCTIONS",
  "URL",
  "KvasirSeg",
  "find_cases",
  "split_cases",
]
