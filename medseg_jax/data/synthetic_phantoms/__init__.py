"""The `synthetic_phantoms` TFDS dataset; importing registers the builder."""

from medseg_jax.data import phantoms
from medseg_jax.data.spec import DatasetSpec
from medseg_jax.data.synthetic_phantoms.synthetic_phantoms import SPLIT_SIZES_2D
from medseg_jax.data.synthetic_phantoms.synthetic_phantoms import SPLIT_SIZES_3D
from medseg_jax.data.synthetic_phantoms.synthetic_phantoms import (
  SyntheticPhantoms,
)
from medseg_jax.data.synthetic_phantoms.synthetic_phantoms import (
  SyntheticPhantomsConfig,
)

DATASET_SPECS = {
  f"synthetic_phantoms/{dims}d": DatasetSpec(
    tfds_name=f"synthetic_phantoms/{dims}d",
    num_classes=len(phantoms.CLASS_NAMES),
    class_names=phantoms.CLASS_NAMES,
    spatial_dims=dims,
    num_channels=1,
    splits=("train", "validation", "test"),
    needs_manual_dir=False,
  )
  for dims in (2, 3)
}
BUILDER = SyntheticPhantoms

__all__ = [
  "BUILDER",
  "DATASET_SPECS",
  "SPLIT_SIZES_2D",
  "SPLIT_SIZES_3D",
  "SyntheticPhantoms",
  "SyntheticPhantomsConfig",
]
