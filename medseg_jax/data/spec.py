"""`DatasetSpec`: what the trainer needs to know about a dataset.

Each builder package declares its datasets as `DATASET_SPECS` (name ->
`DatasetSpec`) and `BUILDER` (its TFDS builder class); `registry` collects
them.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a model and a pipeline need to know about a dataset.

  Attributes:
    tfds_name: name for `tfds.builder` / `tfds.data_source`, with the config
      if any (e.g. `"synthetic_phantoms/2d"`).
    num_classes: number of label classes, background included.
    class_names: name of each class id.
    spatial_dims: 2 for images, 3 for volumes.
    num_channels: size of the image's last axis.
    splits: names of the splits the builder writes.
    needs_manual_dir: whether `prepare` needs files fetched by hand.
    labelled: whether the examples carry labels; False for a folder of
      images alone (`from_folder` with `"labelled": false`), whose stored
      labels are all zero and which only a self-supervised run may read.
  """

  tfds_name: str
  num_classes: int
  class_names: tuple[str, ...]
  spatial_dims: int
  num_channels: int
  splits: tuple[str, ...]
  needs_manual_dir: bool
  labelled: bool = True
