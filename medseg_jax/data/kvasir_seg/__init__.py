"""The `kvasir_seg` TFDS dataset; importing registers the builder."""

from medseg_jax.data.kvasir_seg.kvasir_seg import CHANNEL_NAMES
from medseg_jax.data.kvasir_seg.kvasir_seg import CLASS_NAMES
from medseg_jax.data.kvasir_seg.kvasir_seg import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.kvasir_seg.kvasir_seg import URL
from medseg_jax.data.kvasir_seg.kvasir_seg import KvasirSeg
from medseg_jax.data.kvasir_seg.kvasir_seg import find_cases
from medseg_jax.data.kvasir_seg.kvasir_seg import split_cases
from medseg_jax.data.spec import DatasetSpec

DATASET_SPECS = {
  "kvasir_seg": DatasetSpec(
    tfds_name="kvasir_seg",
    num_classes=len(CLASS_NAMES),
    class_names=CLASS_NAMES,
    spatial_dims=2,
    num_channels=len(CHANNEL_NAMES),
    splits=("train", "validation", "test"),
    needs_manual_dir=False,
  )
}
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
