"""Shared pieces of the medical TFDS builders: features, examples, cases.

All public-dataset builders store the same example format (see
`registry`'s docstring), extended with what is needed to put a prediction
back where it came from:

  image:            f32[*S, C]  after preprocessing (`preprocessing.py`)
  label:            u8[*S]      class ids
  spacing:          f32[d]      mm, array axis order
  affine:           f64[4, 4]   stored voxel -> RAS+ world mm
  original_affine:  f64[4, 4]   of the source file's grid
  original_shape:   i32[d]      of the source file's grid
  case_id:          text
  modality:         text        channel names joined by "+" ("FLAIR+T1")

With `affine`, `original_affine` and `original_shape`,
`preprocessing.to_original_grid` maps a predicted label map back onto the
source grid, and `medical_io.write_nifti(..., original_affine)` writes it.

A builder lists its cases as `Case` records (file paths per modality and
label) and calls `make_example` on each (`generate_examples` does so for a
list of cases); that reads, validates and preprocesses the case and returns
the feature dict, raising `InvalidExampleError` (naming the case and file)
on any bad input. `dataset_info` makes a builder's `DatasetInfo`, and
`manual_dir_or_none` finds an optional local copy of the data.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import medical_io
from medseg_jax.data import preprocessing

PathLike = str | os.PathLike[str]


@dataclasses.dataclass(frozen=True)
class Case:
  """One case to build: image file(s) per channel and a label file.

  Attributes:
    case_id: unique name within the dataset.
    images: one path per modality, in channel order (a 4-D NIfTI counts as
      one path with several channels).
    label: label file, or None when the case has no label (this is an error
      for a labelled split; builders decide).
    extra_masks: optional named masks stored alongside (e.g. DRIVE's
      field-of-view), read like labels.
    kind: a `medical_io.file_kind` value for every file of the case, when
      the names do not tell (downloads can lose their suffix).
  """

  case_id: str
  images: tuple[PathLike, ...]
  label: PathLike | None
  extra_masks: tuple[tuple[str, PathLike], ...] = ()
  kind: str | None = None


def features(
  *,
  spatial_dims: int,
  num_channels: int,
  extra_masks: Sequence[str] = (),
) -> tfds.features.FeaturesDict:
  """The feature spec of a medical builder (variable spatial shape)."""
  spatial = (None,) * spatial_dims
  spec = {
    "image": tfds.features.Tensor(
      shape=(*spatial, num_channels),
      dtype=np.float32,
      encoding=tfds.features.Encoding.ZLIB,
    ),
    "label": tfds.features.Tensor(
      shape=spatial, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
    ),
    "spacing": tfds.features.Tensor(shape=(spatial_dims,), dtype=np.float32),
    "affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float64),
    "original_affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float64),
    "original_shape": tfds.features.Tensor(
      shape=(spatial_dims,), dtype=np.int32
    ),
    "case_id": tfds.features.Text(),
    "modality": tfds.features.Text(),
  }
  for name in extra_masks:
    spec[name] = tfds.features.Tensor(
      shape=spatial, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
    )
  return tfds.features.FeaturesDict(spec)


def dataset_info(
  builder: tfds.core.DatasetBuilder,
  *,
  description: str,
  spatial_dims: int,
  class_names: Sequence[str],
  channel_names: Sequence[str],
  homepage: str | None,
  citation: str | None,
  license: str | None,
  extra_features: Mapping[str, tfds.features.FeatureConnector] | None = None,
  extra_masks: Sequence[str] = (),
  extra_metadata: Mapping[str, Any] | None = None,
) -> tfds.core.DatasetInfo:
  """The `DatasetInfo` of a medical builder.

  Features are those of `features` (one channel per channel name), then
  `extra_features`; examples are stored in order (no shuffling), with
  `("image", "label")` as supervised keys.

  Args:
    builder: the builder whose `_info` this is.
    description: text of the dataset.
    spatial_dims: 2 or 3.
    class_names: class of each label id, background first.
    channel_names: names of the image channels, in order.
    homepage: URL of the dataset.
    citation: BibTeX to cite.
    license: licence text.
    extra_features: further features stored per example (e.g. text).
    extra_masks: names of masks stored alongside the label (see
      `Case.extra_masks`); also listed in the metadata as `extra_masks`.
    extra_metadata: further metadata entries, after `class_names`,
      `channel_names` (and `extra_masks`).

  Returns:
    The info, with metadata `class_names` and `channel_names` as given.
  """
  spec = features(
    spatial_dims=spatial_dims,
    num_channels=len(channel_names),
    extra_masks=extra_masks,
  )
  if extra_features:
    spec = tfds.features.FeaturesDict({**dict(spec.items()), **extra_features})
  metadata: dict[str, Any] = {
    "class_names": class_names,
    "channel_names": channel_names,
  }
  if extra_masks:
    metadata["extra_masks"] = extra_masks
  metadata.update(extra_metadata or {})
  return tfds.core.DatasetInfo(
    builder=builder,
    description=description,
    features=spec,
    supervised_keys=("image", "label"),
    disable_shuffling=True,
    homepage=homepage,
    citation=citation,
    license=license,
    metadata=tfds.core.MetadataDict(**metadata),
  )


def manual_dir_or_none(
  dl_manager: tfds.download.DownloadManager,
) -> pathlib.Path | None:
  """The manual dir, for builders that download when there is none.

  Returns:
    The manual dir, or None when none is configured (TFDS asserts then,
    and when it is missing or empty) or it is not a directory.
  """
  try:
    manual = dl_manager.manual_dir
  except AssertionError:  # No manual dir configured, or it is empty.
    return None
  if manual is None or not pathlib.Path(os.fspath(manual)).is_dir():
    return None
  return pathlib.Path(os.fspath(manual))


def generate_examples(
  cases: Sequence[Case],
  *,
  num_classes: int,
  spatial_dims: int,
  channel_names: Sequence[str],
  preprocess: preprocessing.Preprocessing,
  **make_example_kwargs: Any,
) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields `(case_id, example)` for each case, by `make_example`.

  Args:
    cases: the cases, in the order to store them.
    num_classes: see `make_example`.
    spatial_dims: see `make_example`.
    channel_names: see `make_example`.
    preprocess: see `make_example`.
    **make_example_kwargs: further arguments of `make_example`
      (`label_map`, `image_transform`).

  Raises:
    InvalidExampleError: see `make_example`, as each case is read.
  """
  for case in cases:
    yield (
      case.case_id,
      make_example(
        case,
        num_classes=num_classes,
        spatial_dims=spatial_dims,
        channel_names=channel_names,
        preprocess=preprocess,
        **make_example_kwargs,
      ),
    )


def make_example(
  case: Case,
  *,
  num_classes: int,
  spatial_dims: int,
  channel_names: Sequence[str],
  preprocess: preprocessing.Preprocessing,
  label_map: dict[int, int] | None = None,
  image_transform: Any = None,
) -> dict[str, Any]:
  """Reads, checks and preprocesses one case into a feature dict.

  Args:
    case: the files.
    num_classes: labels must lie in `[0, num_classes)` (after `label_map`).
    spatial_dims: 2 or 3; inputs of another rank are rejected.
    channel_names: names of the image channels, in order; the stacked image
      must have exactly this many channels.
    preprocess: the steps to run.
    label_map: optional raw value -> class id (e.g. `{255: 1}`); raw values
      not in the map are errors unless the map is None.
    image_transform: optional `f(Volume) -> Volume` applied to each image
      volume after reading (e.g. RGB -> float).

  Raises:
    InvalidExampleError: naming the case and files, for any bad input: a
      missing file or label, an unsupported or corrupt file, grids that
      differ, wrong channel count or rank, label values out of range.
  """
  if case.label is None:
    raise checks.InvalidExampleError(
      f"Invalid example {case.case_id!r} "
      f"({checks.describe_paths(case.images)}): no label file found for this "
      "case."
    )
  images = []
  for path in case.images:
    volume = medical_io.read(path, case_id=case.case_id, kind=case.kind)
    if image_transform is not None:
      volume = image_transform(volume)
    images.append(volume)
  label = medical_io.read(case.label, case_id=case.case_id, kind=case.kind)
  for volume in [*images, label]:
    if volume.spatial_dims != spatial_dims:
      raise checks.InvalidExampleError(
        f"Invalid example {case.case_id!r} ({volume.path}): "
        f"{volume.spatial_dims}-D data of shape {volume.data.shape}; this "
        f"dataset is {spatial_dims}-D."
      )
  if label_map is not None:
    label = _map_labels(label, label_map, case.case_id)
  original = images[0]
  extras = []
  for name, path in case.extra_masks:
    mask = medical_io.read(path, case_id=case.case_id, kind=case.kind)
    data = np.asarray(mask.data)
    if data.ndim > mask.spatial_dims:
      data = data[..., 0]
    extras.append((name, dataclasses.replace(mask, data=(data > 0))))

  image, label = preprocess.apply(images, label, case_id=case.case_id)
  num_channels = image.data.shape[-1]
  if num_channels != len(channel_names):
    raise checks.InvalidExampleError(
      f"Invalid example {case.case_id!r} "
      f"({checks.describe_paths(case.images)}): {num_channels} image "
      f"channels; expected {len(channel_names)} ({', '.join(channel_names)})."
    )
  checks.check_example(
    image.data,
    label.data,
    num_classes=num_classes,
    case_id=case.case_id,
    path=[*case.images, case.label],
    spatial_dims=spatial_dims,
  )
  example = {
    "image": image.data.astype(np.float32),
    "label": label.data.astype(np.uint8),
    "spacing": image.spacing.astype(np.float32),
    "affine": image.affine.astype(np.float64),
    "original_affine": original.affine.astype(np.float64),
    "original_shape": np.asarray(original.shape, np.int32),
    "case_id": case.case_id,
    "modality": "+".join(channel_names),
  }
  for name, mask in extras:
    preprocessing.check_same_grid([original, mask], case_id=case.case_id)
    resampled, _ = _same_steps(preprocess, images, mask)
    example[name] = resampled.data.astype(np.uint8)
  return example


def to_unit_rgb(volume: medical_io.Volume) -> medical_io.Volume:
  """An `image_transform`: u8[H, W, 3] -> f32[H, W, 3] in [0, 1].

  Raises:
    InvalidExampleError: naming the file (and its stem as the case), for
      anything but an 8-bit RGB image.
  """
  data = np.asarray(volume.data)
  if data.dtype != np.uint8 or data.ndim != 3 or data.shape[-1] != 3:
    raise checks.InvalidExampleError(
      f"Invalid example {pathlib.Path(volume.path).stem!r} ({volume.path}): "
      f"expected an 8-bit RGB image; got dtype {data.dtype} and shape "
      f"{data.shape}."
    )
  return dataclasses.replace(volume, data=data.astype(np.float32) / 255.0)


def _same_steps(
  preprocess: preprocessing.Preprocessing,
  images: Sequence[medical_io.Volume],
  mask: medical_io.Volume,
) -> tuple[medical_io.Volume, None]:
  """Runs the geometric steps of `preprocess` on a mask, as on a label.

  All image channels go in, so a foreground crop picks the same box as for
  the image itself.
  """
  geometric = dataclasses.replace(preprocess, normalization=("none",))
  _, out = geometric.apply(
    images,
    dataclasses.replace(mask, data=mask.data.astype(np.uint8)),
    case_id="mask",
  )
  return out, None


def _map_labels(
  label: medical_io.Volume, label_map: dict[int, int], case_id: str
) -> medical_io.Volume:
  data = np.asarray(label.data)
  if data.ndim > label.spatial_dims:
    data = data[..., 0]
  values = np.unique(data)
  unknown = [v for v in values.tolist() if v not in label_map]
  if unknown:
    raise checks.InvalidExampleError(
      f"Invalid example {case_id!r} ({label.path}): label values "
      f"{unknown[:10]} are not among the expected raw values "
      f"{sorted(label_map)}."
    )
  # Through the sorted unique values, so negative or large raw values work.
  mapped = np.asarray([label_map[v] for v in values.tolist()], np.int64)
  index = np.searchsorted(values, data)
  return dataclasses.replace(label, data=mapped[index])


class ArrayRecordDefault:
  """Mixin: default the file format to ArrayRecord (random access).

  `tfds.data_source(name, data_dir=...)` passes no file format, and TFDS
  would otherwise default to TFRecord. Put it before
  `tfds.core.GeneratorBasedBuilder` in the bases.
  """

  def __init__(self, *, file_format: str | None = None, **kwargs: Any):
    super().__init__(file_format=file_format or "array_record", **kwargs)
