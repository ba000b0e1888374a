"""The datasets medseg_jax knows, by name, and how to build and read them.

Every dataset is a TFDS builder in this package, stored as ArrayRecord and
read with `tfds.data_source` (random access, no TensorFlow). Examples of all
datasets share one format:

  image:   f32[H, W, C] or f32[D, H, W, C], channels-last
  label:   u8[H, W] or u8[D, H, W], class ids in [0, num_classes)
  spacing: f32[spatial_dims], voxel spacing in mm in array axis order
  case_id: bytes (TFDS returns text features as undecoded UTF-8 bytes)

Typical use:

  registry.prepare("synthetic_phantoms/2d", data_dir)  # Once; then a no-op.
  source = registry.data_source("synthetic_phantoms/2d", "train", data_dir)
  example = source[0]
"""

import dataclasses
import os
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from medseg_jax.data import isbi2012_em
from medseg_jax.data import phantoms
from medseg_jax.data import synthetic_phantoms

_FILE_FORMAT = "array_record"


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
  """

  tfds_name: str
  num_classes: int
  class_names: tuple[str, ...]
  spatial_dims: int
  num_channels: int
  splits: tuple[str, ...]
  needs_manual_dir: bool


DATASETS: dict[str, DatasetSpec] = {
  "synthetic_phantoms/2d": DatasetSpec(
    tfds_name="synthetic_phantoms/2d",
    num_classes=len(phantoms.CLASS_NAMES),
    class_names=phantoms.CLASS_NAMES,
    spatial_dims=2,
    num_channels=1,
    splits=("train", "validation", "test"),
    needs_manual_dir=False,
  ),
  "synthetic_phantoms/3d": DatasetSpec(
    tfds_name="synthetic_phantoms/3d",
    num_classes=len(phantoms.CLASS_NAMES),
    class_names=phantoms.CLASS_NAMES,
    spatial_dims=3,
    num_channels=1,
    splits=("train", "validation", "test"),
    needs_manual_dir=False,
  ),
  "isbi2012_em": DatasetSpec(
    tfds_name="isbi2012_em",
    num_classes=len(isbi2012_em.CLASS_NAMES),
    class_names=isbi2012_em.CLASS_NAMES,
    spatial_dims=2,
    num_channels=1,
    splits=("train", "validation"),
    needs_manual_dir=True,
  ),
}

# The builder class behind each dataset; importing its module registered it
# with TFDS.
_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
  "synthetic_phantoms/2d": synthetic_phantoms.SyntheticPhantoms,
  "synthetic_phantoms/3d": synthetic_phantoms.SyntheticPhantoms,
  "isbi2012_em": isbi2012_em.Isbi2012Em,
}


def get_dataset_spec(name: str) -> DatasetSpec:
  """Returns the spec of a registered dataset.

  Args:
    name: a key of `DATASETS`, e.g. `"synthetic_phantoms/2d"`.

  Raises:
    ValueError: if `name` is not registered; the message lists valid names.
  """
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(
      f"Unknown dataset {name!r}. Valid names: {', '.join(sorted(DATASETS))}."
    ) from None


def prepare(
  name: str,
  data_dir: str | os.PathLike[str],
  manual_dir: str | os.PathLike[str] | None = None,
) -> tfds.core.DatasetBuilder:
  """Builds a dataset into `data_dir` as ArrayRecord, unless already built.

  Building happens in a temporary `incomplete.*` directory next to the final
  one and is renamed into place only when every split has been written, so a
  failed build (for example an `InvalidExampleError` from a corrupt input
  file) leaves no dataset that looks prepared.

  Args:
    name: a key of `DATASETS`.
    data_dir: root directory of the prepared datasets.
    manual_dir: directory of files fetched by hand, for datasets with
      `needs_manual_dir`; ignored by the others. If omitted (None or ""),
      TFDS's default `<data_dir>/downloads/manual` is used when it exists.

  Returns:
    The builder, prepared; `builder.as_data_source(split)` reads it.

  Raises:
    ValueError: if `name` is unknown.
    FileNotFoundError: if the dataset needs a manual directory and none is
      found; the message says which files are expected.
    InvalidExampleError: if an input example is malformed.
  """
  spec = get_dataset_spec(name)
  builder = tfds.builder(
    spec.tfds_name, data_dir=os.fspath(data_dir), file_format=_FILE_FORMAT
  )
  if builder.is_prepared():
    return builder

  # Our datasets are never on the public TFDS bucket.
  download_config = tfds.download.DownloadConfig(try_download_gcs=False)
  if spec.needs_manual_dir:
    manual_dir = manual_dir or None  # Configs use "" for "not set".
    if manual_dir is None:
      default = pathlib.Path(data_dir) / "downloads" / "manual"
      if default.is_dir() and any(default.iterdir()):
        manual_dir = default
    if manual_dir is None or not pathlib.Path(manual_dir).is_dir():
      found = (
        "was not given" if manual_dir is None else f"{manual_dir} is missing"
      )
      raise FileNotFoundError(
        f"Dataset {name!r} needs files fetched by hand: manual_dir {found}.\n"
        f"{_BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS}"
      )
    download_config = dataclasses.replace(
      download_config, manual_dir=os.fspath(manual_dir)
    )

  incomplete_before = _incomplete_dirs(builder)
  try:
    builder.download_and_prepare(download_config=download_config)
  except BaseException:
    # TFDS 4.9 already deletes its temporary directory when a build fails;
    # make sure of it, without touching directories that were there before
    # (another process may still be writing them).
    for path in _incomplete_dirs(builder) - incomplete_before:
      shutil.rmtree(path, ignore_errors=True)
    raise
  return builder


def data_source(
  name: str, split: str, data_dir: str | os.PathLike[str]
) -> Sequence[dict[str, Any]]:
  """Random-access reader of a prepared split, without TensorFlow.

  Args:
    name: a key of `DATASETS`.
    split: a split name, with TFDS slicing if wanted: `"train"`,
      `"train[:10]"`, `"validation[50%:]"`.
    data_dir: root directory the dataset was prepared into.

  Returns:
    A sequence of examples: dicts of NumPy arrays with keys `image`, `label`,
    `spacing` and `case_id` (bytes), see the module docstring.

  Raises:
    ValueError: if `name` is unknown.
    FileNotFoundError: if the dataset has not been prepared in `data_dir`.
  """
  spec = get_dataset_spec(name)
  builder = tfds.builder(spec.tfds_name, data_dir=os.fspath(data_dir))
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"Dataset {name!r} is not prepared in {data_dir}; call "
      f"medseg_jax.data.registry.prepare({name!r}, data_dir) first."
    )
  return tfds.data_source(
    spec.tfds_name, split=split, data_dir=os.fspath(data_dir), download=False
  )


def _incomplete_dirs(builder: tfds.core.DatasetBuilder) -> set[pathlib.Path]:
  """TFDS's temporary build directories next to the builder's version dir."""
  parent = pathlib.Path(os.fspath(builder.data_path)).parent
  if not parent.is_dir():
    return set()
  return {p for p in parent.iterdir() if p.name.startswith("incomplete.")}
