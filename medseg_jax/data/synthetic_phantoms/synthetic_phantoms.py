"""TFDS builder for `synthetic_phantoms`: generated anatomy-like phantoms.

Nothing is downloaded: every case is drawn by `medseg_jax.data.phantoms`
from a fixed seed, so the dataset is identical wherever it is built.

Build and read it without TensorFlow:

  from medseg_jax.data import registry
  registry.prepare("synthetic_phantoms/2d", data_dir="/tmp/tfds")
  train = registry.data_source("synthetic_phantoms/2d", "train", "/tmp/tfds")
  train[0]["image"].shape  # (128, 128, 1)
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import medical_builder
from medseg_jax.data import phantoms

# Split sizes of the registered configs. Change them here (and bump VERSION).
SPLIT_SIZES_2D = {"train": 256, "validation": 32, "test": 64}
SPLIT_SIZES_3D = {"train": 48, "validation": 8, "test": 16}

# Each split draws its cases from its own seed stream.
_SPLIT_STREAMS = {"train": 0, "validation": 1, "test": 2}

_DESCRIPTION = """\
Synthetic anatomy-like segmentation phantoms, generated locally from a fixed
seed. Each case has a body outline (background, class 0), an organ (class 1:
a smoothly deformed ellipse or ellipsoid with random position, size and
orientation), a lesion (class 2: a smaller blob strictly inside the organ,
present in about 85% of cases) and a vessel (class 3: a curved tube that does
not touch the organ). Intensities are per-case random contrasts with a smooth
multiplicative bias field, Gaussian partial-volume blur and Gaussian noise;
labels come from the geometry and are not blurred.

Features: `image` f32[H, W, 1] or f32[D, H, W, 1]; `label` u8[H, W] or
u8[D, H, W]; `spacing` f32[2] or f32[3] in mm, in array axis order;
`case_id` text such as "train_0007" (returned as `bytes` by
`tfds.data_source`).
"""


@dataclasses.dataclass(eq=False)
class SyntheticPhantomsConfig(tfds.core.BuilderConfig):
  """Shape, spacing, split sizes and seed of one phantom variant.

  Attributes:
    shape: spatial shape of every case, `(H, W)` or `(D, H, W)`.
    spacing: voxel spacing in mm, in the same axis order as `shape`.
    split_sizes: number of cases per split.
    seed: root seed. Case `i` of split `s` is drawn from
      `np.random.default_rng([seed, stream(s), i])`, so splits never share a
      case and a case does not depend on the size of its split.
  """

  shape: tuple[int, ...] = (128, 128)
  spacing: tuple[float, ...] = (1.0, 1.0)
  split_sizes: Mapping[str, int] = dataclasses.field(
    default_factory=lambda: dict(SPLIT_SIZES_2D)
  )
  seed: int = 0


class SyntheticPhantoms(medical_builder.MedicalBuilder):
  """Synthetic organ / lesion / vessel phantoms in 2-D and 3-D.

  Configs:
    `2d`: 128 x 128 images at 1 x 1 mm; 256 / 32 / 64 cases in train /
      validation / test.
    `3d`: 64 x 64 x 64 volumes at 2 x 1 x 1 mm (D, H, W); 48 / 8 / 16 cases.

  Examples are stored in the order they are generated (`ds[i]` is case
  `i` of its split) as ArrayRecord, which is the default file format of this
  builder.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    SyntheticPhantomsConfig(
      name="2d",
      description="128 x 128 images, 1 x 1 mm.",
      shape=(128, 128),
      spacing=(1.0, 1.0),
      split_sizes=SPLIT_SIZES_2D,
      seed=20_120_002,
    ),
    SyntheticPhantomsConfig(
      name="3d",
      description="64 x 64 x 64 volumes, 2 x 1 x 1 mm (D, H, W).",
      shape=(64, 64, 64),
      spacing=(2.0, 1.0, 1.0),
      split_sizes=SPLIT_SIZES_3D,
      seed=20_120_003,
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "2d"

  @classmethod
  def spec_for(
    cls, config: SyntheticPhantomsConfig
  ) -> medical_builder.BuilderSpec:
    return medical_builder.BuilderSpec(
      description=_DESCRIPTION,
      class_names=phantoms.CLASS_NAMES,
      channel_names=("intensity",),
      spatial_dims=len(config.shape),
      splits=tuple(config.split_sizes),
      shape=config.shape,
      image_encoding=tfds.features.Encoding.BYTES,
      medical=False,
    )

  def _cases_per_split(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, list[tuple[str, int]]]:
    del dl_manager  # Nothing to download.
    return {
      split: [(split, index) for index in range(size)]
      for split, size in self.builder_config.split_sizes.items()
    }

  def _make_example(self, case: tuple[str, int]) -> tuple[int, dict[str, Any]]:
    split, index = case
    config = self.builder_config
    case_id = f"{split}_{index:04d}"
    rng = np.random.default_rng([config.seed, _SPLIT_STREAMS[split], index])
    image, label = phantoms.make_phantom(rng, config.shape, config.spacing)
    checks.check_example(
      image,
      label,
      num_classes=phantoms.NUM_CLASSES,
      case_id=case_id,
      path=f"<generated: {self.name}/{config.name} seed {config.seed}>",
      spatial_dims=len(config.shape),
    )
    return index, {
      "image": image,
      "label": label,
      "spacing": np.asarray(config.spacing, np.float32),
      "case_id": case_id,
    }
