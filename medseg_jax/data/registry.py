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

from medseg_jax.data import acdc
from medseg_jax.data import drive
from medseg_jax.data import from_folder
from medseg_jax.data import isbi2012_em
from medseg_jax.data import isic2018
from medseg_jax.data import kvasir_seg
from medseg_jax.data import lesjak_ms
from medseg_jax.data import msd
from medseg_jax.data import promise12
from medseg_jax.data import synthetic_phantoms
from medseg_jax.data.spec import DatasetSpec

_FILE_FORMAT = "array_record"


# Builder packages; each declares `BUILDER` (a `medical_builder.MedicalBuilder`)
# and `DATASET_SPECS` (its `BUILDER.dataset_specs()`), and importing it
# registered its builder with TFDS. To add a dataset, write a package like
# these and list it here.
_PACKAGES = (
  synthetic_phantoms,
  isbi2012_em,
  lesjak_ms,
  msd,
  acdc,
  promise12,
  kvasir_seg,
  isic2018,
  drive,
)

# A user's own folder (`images/`, `labels/`, `dataset.json`): its spec comes
# from the folder, given as `manual_dir`.
FROM_FOLDER = "from_folder"

DATASETS: dict[str, DatasetSpec] = {
  name: spec
  for package in _PACKAGES
  for name, spec in package.DATASET_SPECS.items()
}

# The builder class behind each dataset.
_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
  name: package.BUILDER
  for package in _PACKAGES
  for name in package.DATASET_SPECS
}


def get_dataset_spec(
  name: str, manual_dir: str | os.PathLike[str] | None = None
) -> DatasetSpec:
  """Returns the spec of a registered dataset.

  Args:
    name: a key of `DATASETS`, e.g. `"synthetic_phantoms/2d"`, or
      `"from_folder"` for a user's folder.
    manual_dir: the folder, for `"from_folder"`; ignored otherwise.

  Raises:
    ValueError: if `name` is not registered (the message lists valid
      names), or is `"from_folder"` without a `manual_dir`.
  """
  if name == FROM_FOLDER:
    return from_folder.spec_from_folder(_folder(manual_dir))
  try:
    return DATASETS[name]
  except KeyError:
    valid = ", ".join([*sorted(DATASETS), FROM_FOLDER])
    raise ValueError(
      f"Unknown dataset {name!r}. Valid names: {valid}."
    ) from None


def input_preprocessing(
  name: str,
  data_dir: str | os.PathLike[str],
  manual_dir: str | os.PathLike[str] | None = None,
) -> Any:
  """The build-time `preprocessing.Preprocessing` of a dataset, or None.

  What a new case (e.g. for `python -m medseg_jax.predict`) must go through
  to look like the stored training data: reorientation, cropping,
  resampling and intensity normalisation. None for datasets that store
  their images as read (the synthetic phantoms, ISBI 2012).
  """
  if name == FROM_FOLDER:
    return from_folder.load_dataset_json(_folder(manual_dir)).preprocessing()
  spec = get_dataset_spec(name)
  builder = tfds.builder(spec.tfds_name, data_dir=os.fspath(data_dir))
  return builder.preprocessing  # See `medical_builder.MedicalBuilder`.


def _folder(manual_dir: str | os.PathLike[str] | None) -> str:
  if not manual_dir:
    raise ValueError(
      f"Dataset {FROM_FOLDER!r} needs manual_dir: the folder holding "
      f"images/, labels/ and {from_folder.DATASET_JSON}.\n"
      f"{from_folder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )
  return os.fspath(manual_dir)


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
    manual_dir: directory of files fetched by hand. Required (or TFDS's
      default `<data_dir>/downloads/manual`) for datasets with
      `needs_manual_dir`; for the others it replaces the download when
      given. None or "" means not set.

  Returns:
    The builder, prepared; `builder.as_data_source(split)` reads it.

  Raises:
    ValueError: if `name` is unknown.
    FileNotFoundError: if the dataset needs a manual directory and none is
      found; the message says which files are expected.
    InvalidExampleError: if an input example is malformed.
  """
  if name == FROM_FOLDER:
    builder = from_folder.builder_for(_folder(manual_dir), data_dir)
    if not builder.is_prepared():
      builder = _build(
        builder,
        tfds.download.DownloadConfig(try_download_gcs=False),
        lambda: from_folder.builder_for(_folder(manual_dir), data_dir),
      )
    return builder
  spec = get_dataset_spec(name)

  def make_builder():
    return tfds.builder(
      spec.tfds_name, data_dir=os.fspath(data_dir), file_format=_FILE_FORMAT
    )

  builder = make_builder()
  if builder.is_prepared():
    return builder

  # Our datasets are never on the public TFDS bucket.
  download_config = tfds.download.DownloadConfig(try_download_gcs=False)
  manual_dir = manual_dir or None  # Configs use "" for "not set".
  if not spec.needs_manual_dir and manual_dir is not None:
    if not pathlib.Path(manual_dir).is_dir():
      raise FileNotFoundError(f"manual_dir {manual_dir} is not a directory.")
    if not any(pathlib.Path(manual_dir).iterdir()):
      # TFDS would ignore an empty manual dir and download instead.
      raise FileNotFoundError(
        f"manual_dir {manual_dir} is empty.\n"
        f"{_BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS}"
      )
    download_config = dataclasses.replace(
      download_config, manual_dir=os.fspath(manual_dir)
    )
  if spec.needs_manual_dir:
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

  return _build(builder, download_config, make_builder)


def _build(
  builder: tfds.core.DatasetBuilder,
  download_config: tfds.download.DownloadConfig,
  make_builder: Any,
) -> tfds.core.DatasetBuilder:
  """Runs the build, leaving no temporary directory behind on failure."""
  incomplete_before = _incomplete_dirs(builder)
  try:
    builder.download_and_prepare(download_config=download_config)
  except BaseException as e:
    # TFDS 4.9 already deletes its temporary directory when a build fails;
    # make sure of it, without touching directories that were there before
    # (another process may still be writing them).
    for path in _incomplete_dirs(builder) - incomplete_before:
      shutil.rmtree(path, ignore_errors=True)
    # Two processes building the same dataset at once: the second one's final
    # rename fails because the first one's complete build is already there.
    if isinstance(e, FileExistsError):
      rebuilt = make_builder()
      if rebuilt.is_prepared():
        return rebuilt
    raise
  return builder


def data_source(
  name: str,
  split: str,
  data_dir: str | os.PathLike[str],
  manual_dir: str | os.PathLike[str] | None = None,
) -> Sequence[dict[str, Any]]:
  """Random-access reader of a prepared split, without TensorFlow.

  Args:
    name: a key of `DATASETS`, or `"from_folder"`.
    split: a split name, with TFDS slicing if wanted: `"train"`,
      `"train[:10]"`, `"validation[50%:]"`.
    data_dir: root directory the dataset was prepared into.
    manual_dir: the folder, for `"from_folder"`; ignored otherwise.

  Returns:
    A sequence of examples: dicts of NumPy arrays with keys `image`, `label`,
    `spacing` and `case_id` (bytes), see the module docstring, plus any
    dataset-specific ones (`affine`, `original_shape`, ...).

  Raises:
    ValueError: if `name` is unknown.
    FileNotFoundError: if the dataset has not been prepared in `data_dir`.
  """
  if name == FROM_FOLDER:
    builder = from_folder.builder_for(_folder(manual_dir), data_dir)
  else:
    spec = get_dataset_spec(name)
    builder = tfds.builder(spec.tfds_name, data_dir=os.fspath(data_dir))
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"Dataset {name!r} is not prepared in {data_dir}; call "
      f"medseg_jax.data.registry.prepare({name!r}, data_dir) first."
    )
  if name == FROM_FOLDER:
    return builder.as_data_source(split)
  return tfds.data_source(
    spec.tfds_name, split=split, data_dir=os.fspath(data_dir), download=False
  )


def _incomplete_dirs(builder: tfds.core.DatasetBuilder) -> set[pathlib.Path]:
  """TFDS's temporary build directories next to the builder's version dir."""
  parent = pathlib.Path(os.fspath(builder.data_path)).parent
  if not parent.is_dir():
    return set()
  return {p for p in parent.iterdir() if p.name.startswith("incomplete.")}
