"""The base of our TFDS builders, and the shared pieces they read cases with.

A builder subclasses `MedicalBuilder` and declares, as class attributes,
what it stores (`SPEC`, a `BuilderSpec`: classes, channels, spatial dims,
splits, descriptive texts), its `VERSION` and `RELEASE_NOTES`, and, if the
data is fetched by hand, `MANUAL_DOWNLOAD_INSTRUCTIONS`. It implements only
what is its own: `_cases_per_split` finds its files, and `_make_example`
reads one case if the default (one `Case`, read by `make_example`) does not
fit. The base makes the `DatasetInfo`, the splits, the registry entries
(`dataset_specs`) and stores ArrayRecord by default.

Most builders store the medical example format (see `registry`'s docstring
for the common part), extended with what is needed to put a prediction
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
The plain format (`BuilderSpec(medical=False)`: ISBI 2012, the phantoms)
stores only image, label, spacing and case_id.

A case is a `Case` record (file paths per modality and label);
`make_example` reads, validates and preprocesses it and returns the feature
dict, raising `InvalidExampleError` (naming the case and file) on any bad
input. `manual_dir_or_none` finds an optional local copy of the data.

  class MyData(medical_builder.MedicalBuilder):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    SPEC = medical_builder.BuilderSpec(
      description="...", class_names=("background", "lesion"),
      channel_names=("T1",), spatial_dims=3, splits=("train", "test"),
    )
    PREPROCESSING = preprocessing.Preprocessing(normalization=("mri",))

    def _cases_per_split(self, dl_manager):
      return {"train": [Case(...), ...], "test": [...]}
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import os
import pathlib
import re
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import medical_io
from medseg_jax.data import preprocessing
from medseg_jax.data.spec import DatasetSpec

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


# Feature names every format has, and those the medical format adds.
_PLAIN_FEATURES = ("image", "label", "spacing", "case_id")
_MEDICAL_FEATURES = ("affine", "original_affine", "original_shape", "modality")
_SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class BuilderSpec:
  """What a builder stores: features, splits and the texts of its info.

  Sequences are kept as given (they go into the info's metadata as they
  are); `dataset_spec` turns them into tuples.

  Attributes:
    description: text of the dataset.
    class_names: class of each label id, background first (at least 2).
    channel_names: names of the image channels, in order (at least 1).
    spatial_dims: 2 or 3.
    splits: split names, in the order they are written; None when the data
      decides (a user's folder).
    needs_manual_dir: whether the files must be fetched by hand (then the
      builder needs `MANUAL_DOWNLOAD_INSTRUCTIONS`).
    homepage: URL of the dataset.
    citation: BibTeX to cite.
    license: licence text.
    shape: spatial shape of every example, or None when it varies.
    image_encoding: how the image tensor is stored (ZLIB compresses smooth
      images well; BYTES suits noise-like data that does not compress).
    medical: the medical format (geometry, `modality`, channel names in the
      metadata); False for the plain one (image, label, spacing, case_id).
    extra_masks: names of `u8[*S]` masks stored alongside the label (see
      `Case.extra_masks`); also listed in the metadata.
    extra_text: names of further text features (e.g. ACDC's `phase`).
    extra_metadata: further metadata entries, after `class_names`,
      `channel_names` and `extra_masks`.
  """

  description: str
  class_names: Sequence[str]
  channel_names: Sequence[str]
  spatial_dims: int
  splits: Sequence[str] | None
  needs_manual_dir: bool = False
  homepage: str | None = None
  citation: str | None = None
  license: str | None = None
  shape: tuple[int, ...] | None = None
  image_encoding: tfds.features.Encoding = tfds.features.Encoding.ZLIB
  medical: bool = True
  extra_masks: Sequence[str] = ()
  extra_text: Sequence[str] = ()
  extra_metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    def fail(name: str, expected: str) -> None:
      raise ValueError(
        f"BuilderSpec.{name} is {getattr(self, name)!r}; expected {expected}."
      )

    if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
      fail("spatial_dims", "2 or 3")
    for name, minimum in (("class_names", 2), ("channel_names", 1)):
      if not _distinct_names(getattr(self, name), minimum):
        fail(name, f"a list of at least {minimum} distinct non-empty strings")
    if self.splits is not None and not (
      _distinct_names(self.splits, 1)
      and all(_SPLIT_NAME.fullmatch(s) for s in self.splits)
    ):
      fail("splits", "None or distinct names such as 'train', 'test'")
    if self.shape is not None and (
      len(self.shape) != self.spatial_dims
      or not all(isinstance(n, int) and n > 0 for n in self.shape)
    ):
      fail("shape", f"None or {self.spatial_dims} positive ints")
    if not isinstance(self.image_encoding, tfds.features.Encoding):
      fail("image_encoding", "a tfds.features.Encoding")
    taken = set(_PLAIN_FEATURES + _MEDICAL_FEATURES)
    for name in ("extra_masks", "extra_text"):
      names = getattr(self, name)
      if not _distinct_names(names, 0) or taken & set(names):
        fail(name, f"new feature names, none of {', '.join(sorted(taken))}")
      taken |= set(names)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def features(self) -> tfds.features.FeaturesDict:
    """The feature spec: the format's features, then the extra ones."""
    spatial = self.shape or (None,) * self.spatial_dims
    zlib = tfds.features.Encoding.ZLIB
    spec = {
      "image": tfds.features.Tensor(
        shape=(*spatial, len(self.channel_names)),
        dtype=np.float32,
        encoding=self.image_encoding,
      ),
      "label": tfds.features.Tensor(
        shape=spatial, dtype=np.uint8, encoding=zlib
      ),
      "spacing": tfds.features.Tensor(
        shape=(self.spatial_dims,), dtype=np.float32
      ),
    }
    if self.medical:
      for name in ("affine", "original_affine"):
        spec[name] = tfds.features.Tensor(shape=(4, 4), dtype=np.float64)
      spec["original_shape"] = tfds.features.Tensor(
        shape=(self.spatial_dims,), dtype=np.int32
      )
    spec["case_id"] = tfds.features.Text()
    if self.medical:
      spec["modality"] = tfds.features.Text()
    for name in self.extra_masks:
      spec[name] = tfds.features.Tensor(
        shape=spatial, dtype=np.uint8, encoding=zlib
      )
    for name in self.extra_text:
      spec[name] = tfds.features.Text()
    return tfds.features.FeaturesDict(spec)

  def metadata(self) -> dict[str, Any]:
    """The info's metadata: class (and channel) names, then the extras."""
    metadata: dict[str, Any] = {"class_names": self.class_names}
    if self.medical:
      metadata["channel_names"] = self.channel_names
    if self.extra_masks:
      metadata["extra_masks"] = self.extra_masks
    metadata.update(self.extra_metadata)
    return metadata

  def dataset_spec(
    self, tfds_name: str, splits: Sequence[str] | None = None
  ) -> DatasetSpec:
    """The registry's `DatasetSpec` of this declaration.

    Args:
      tfds_name: name for `tfds.builder`, with the config if any.
      splits: the split names, when the declaration leaves them to the data.

    Raises:
      ValueError: if neither the declaration nor `splits` names the splits.
    """
    splits = self.splits if splits is None else splits
    if splits is None:
      raise ValueError(
        f"{tfds_name}: the splits depend on the data; pass `splits`."
      )
    return DatasetSpec(
      tfds_name=tfds_name,
      num_classes=self.num_classes,
      class_names=tuple(self.class_names),
      spatial_dims=self.spatial_dims,
      num_channels=len(self.channel_names),
      splits=tuple(splits),
      needs_manual_dir=self.needs_manual_dir,
    )


def _distinct_names(names: Any, minimum: int) -> bool:
  """Whether `names` is a list or tuple of >= `minimum` distinct strings."""
  return (
    isinstance(names, (list, tuple))
    and len(names) >= minimum
    and all(isinstance(n, str) and n for n in names)
    and len(set(names)) == len(names)
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
  labelled: bool = True,
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
    labelled: False for a case of a label-free dataset: it has no label
      file, and its stored label is all zero on the image's grid.

  Raises:
    InvalidExampleError: naming the case and files, for any bad input: a
      missing file or label, an unsupported or corrupt file, grids that
      differ, wrong channel count or rank, label values out of range.
  """
  if case.label is None and labelled:
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
  if labelled:
    label = medical_io.read(case.label, case_id=case.case_id, kind=case.kind)
  else:  # Zeros on the first image's grid, resampled and cropped with it.
    first = images[0]
    label = dataclasses.replace(
      first, data=np.zeros(first.shape, np.uint8), path=""
    )
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
    path=[*case.images, *([case.label] if labelled else [])],
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


# ---------------------------------------------------------------- the base


class MedicalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of our builders: the info, splits and examples from a declaration.

  A subclass declares `VERSION`, `RELEASE_NOTES` (with an entry for
  `VERSION`), `SPEC` (or overrides `spec_for` when the declaration depends
  on the config), `MANUAL_DOWNLOAD_INSTRUCTIONS` when `SPEC.needs_manual_dir`,
  and `PREPROCESSING` (or the `preprocessing` property) for the default
  `_make_example`. A malformed declaration fails when the class is defined,
  with a message naming the class and the attribute.

  It implements `_cases_per_split` (the cases of each split: `Case`s, or
  whatever its `_make_example` reads) and, unless each case is one `Case`
  read by `make_example`, `_make_example`. Examples are written in case
  order; the file format is ArrayRecord unless the caller names another
  (`tfds.data_source(name, data_dir=...)` passes none, and TFDS would
  otherwise default to TFRecord).
  """

  SPEC: ClassVar[BuilderSpec | None] = None
  PREPROCESSING: ClassVar[preprocessing.Preprocessing | None] = None

  def __init_subclass__(cls, **kwargs: Any):
    # Checked before TFDS registers the name, so a bad class is not left
    # registered.
    if not inspect.isabstract(cls):
      _check_declaration(cls)
    super().__init_subclass__(**kwargs)

  def __init__(self, *, file_format: str | None = None, **kwargs: Any):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  @classmethod
  def spec_for(cls, config: tfds.core.BuilderConfig | None) -> BuilderSpec:
    """The declaration for a builder config (by default `SPEC`, any config)."""
    del config  # The same for every config.
    return cls.SPEC

  @classmethod
  def dataset_specs(cls) -> dict[str, DatasetSpec]:
    """The registry's entries for this builder: name -> `DatasetSpec`.

    One entry named like the builder when it has no config or one config
    (whose TFDS name, `name/config`, is still the one read); otherwise one
    entry `name/config` per config.
    """
    configs = cls.BUILDER_CONFIGS
    if not configs:
      return {cls.name: cls.spec_for(None).dataset_spec(cls.name)}
    specs = {}
    for config in configs:
      tfds_name = f"{cls.name}/{config.name}"
      key = cls.name if len(configs) == 1 else tfds_name
      specs[key] = cls.spec_for(config).dataset_spec(tfds_name)
    return specs

  @property
  def spec(self) -> BuilderSpec:
    """This builder's declaration (that of its config)."""
    return self.spec_for(self.builder_config)

  @property
  def preprocessing(self) -> preprocessing.Preprocessing | None:
    """The build-time steps of `_read_case`; None for data stored as read."""
    return self.PREPROCESSING

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.spec
    return tfds.core.DatasetInfo(
      builder=self,
      description=spec.description,
      features=spec.features(),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
      homepage=spec.homepage,
      citation=spec.citation,
      license=spec.license,
      metadata=tfds.core.MetadataDict(**spec.metadata()),
    )

  def _split_generators(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, Iterator[tuple[Any, dict[str, Any]]]]:
    cases = self._cases_per_split(dl_manager)
    declared = self.spec.splits
    if declared is not None and set(cases) != set(declared):
      raise ValueError(
        f"{type(self).__name__}._cases_per_split gave the splits "
        f"{', '.join(cases)}; SPEC declares {', '.join(declared)}."
      )
    order = cases if declared is None else declared
    return {split: self._generate_examples(cases[split]) for split in order}

  def _generate_examples(
    self, cases: Sequence[Any]
  ) -> Iterator[tuple[Any, dict[str, Any]]]:
    for case in cases:
      yield self._make_example(case)

  @abc.abstractmethod
  def _cases_per_split(
    self, dl_manager: tfds.download.DownloadManager
  ) -> Mapping[str, Sequence[Any]]:
    """The cases of each split, in the order to store them.

    Runs once per build, before any example is read, so a missing folder
    fails early. A case is a `Case` for the default `_make_example`, or
    whatever the builder's own `_make_example` takes.
    """

  def _make_example(self, case: Any) -> tuple[Any, dict[str, Any]]:
    """`(key, example)` of one case: by default a `Case` and its id."""
    return case.case_id, self._read_case(case)

  def _read_case(self, case: Case, **kwargs: Any) -> dict[str, Any]:
    """`make_example` with the declared classes, channels and dims.

    Args:
      case: the files.
      **kwargs: further arguments of `make_example` (`label_map`,
        `image_transform`), or a `preprocess` other than `preprocessing`.
    """
    spec = self.spec
    kwargs.setdefault("preprocess", self.preprocessing)
    return make_example(
      case,
      num_classes=spec.num_classes,
      spatial_dims=spec.spatial_dims,
      channel_names=spec.channel_names,
      **kwargs,
    )


def _check_declaration(cls: type[MedicalBuilder]) -> None:
  """Raises TypeError, naming the class, for a malformed declaration."""

  def fail(problem: str) -> None:
    raise TypeError(f"{cls.__name__}: {problem}")

  if str(cls.VERSION) not in cls.RELEASE_NOTES:
    fail(
      f"RELEASE_NOTES has no entry for VERSION {cls.VERSION} (the notes are "
      "stored with every prepared dataset)."
    )
  own_spec_for = cls.spec_for.__func__ is not MedicalBuilder.spec_for.__func__
  if cls.SPEC is None and not own_spec_for:
    fail("declare SPEC = BuilderSpec(...), or override spec_for(config).")
  specs = [] if cls.SPEC is None else [("SPEC", cls.SPEC)]
  specs += [
    (f"spec_for({c.name!r})", cls.spec_for(c)) for c in cls.BUILDER_CONFIGS
  ]
  for name, spec in specs:
    if not isinstance(spec, BuilderSpec):
      fail(f"{name} is a {type(spec).__name__}; expected a BuilderSpec.")
    if spec.needs_manual_dir and not cls.MANUAL_DOWNLOAD_INSTRUCTIONS:
      fail(
        f"{name} needs a manual dir; set MANUAL_DOWNLOAD_INSTRUCTIONS to "
        "say which files go there."
      )
