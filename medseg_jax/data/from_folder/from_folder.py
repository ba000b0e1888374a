"""`from_folder`: a TFDS builder for a user's own segmentation data.

No Python needed: put the files in one folder,

  my_data/
    dataset.json
    images/   case1.nii.gz  case2.nii.gz ...           (one channel)
              or case1_0000.nii.gz case1_0001.nii.gz   (nnU-Net channels)
              or case1/  (a DICOM series directory)   or case1.png ...
    labels/   case1.nii.gz  case2.nii.gz ...

and describe it in `dataset.json`:

  {
    "name": "my_data",                 # TFDS config name: from_folder/my_data
    "spatial_dims": 3,                 # 2 (images) or 3 (volumes)
    "channel_names": ["T1", "FLAIR"],  # image channels, in order
    "class_names": ["background", "lesion"],
    "normalization": ["mri", "mri"],   # per channel, or one for all:
                                       #   ct, mri, zscore, minmax, none
    "spacing": [1.0, 1.0, 1.0],        # optional target voxel size (mm)
    "validation_fraction": 0.2,        # optional; or "test_fraction", or
    "splits": {"train": [...], "validation": [...]},   # explicit case ids
    "label_map": {"255": 1}            # optional raw label value -> class
  }

A folder of images without labels (for self-supervised pretraining, see
docs/pretraining.md) says `"labelled": false`: it needs no `labels/`
folder (one that is there is not read) and no `class_names`; its examples
store an all-zero label, and its spec has `labelled=False`, so that the
supervised trainer refuses it with a message instead of learning from
zeros.

Optional too: `"crop_foreground"` (bool), `"ct_window"` ([low, high] HU),
`"image_order"` (1 linear or 3 cubic resampling), `"description"`,
`"citation"`, `"license"`, `"homepage"`.

Files pair by name: an image's stem (the name without `.nii.gz`, `.png`,
...) is its case id; a stem ending in `_0000`, `_0001`, ... whose prefix
names a label is channel 0, 1, ... of that case, as in nnU-Net. Supported:
NIfTI, MetaImage (`.mhd`/`.mha`), PNG/JPEG/BMP, TIFF (pages -> slices),
DICOM series as sub-directories (see `medical_io`).

Without `splits` or fractions, every case goes to `train`. Fractions split
the cases sorted by id: the last `test_fraction` go to `test`, the
`validation_fraction` before them to `validation`, the rest to `train`.

Use:

  from medseg_jax.data import from_folder
  builder = from_folder.prepare("/data/my_data", data_dir)   # Once.
  train = builder.as_data_source("train")
  # Later, also without the raw folder:
  tfds.data_source("from_folder/my_data", split="train", data_dir=data_dir)

Bad input stops the build with `InvalidExampleError` naming the file, and
leaves nothing that looks prepared.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import medical_builder
from medseg_jax.data import medical_io
from medseg_jax.data import preprocessing
from medseg_jax.data.spec import DatasetSpec

PathLike = str | os.PathLike[str]

DATASET_JSON = "dataset.json"
IMAGES_DIR = "images"
LABELS_DIR = "labels"
VERSION = "1.0.0"

_REQUIRED_KEYS = ("name", "spatial_dims", "channel_names", "class_names")
_OPTIONAL_KEYS = (
  "labelled",
  "normalization",
  "spacing",
  "splits",
  "validation_fraction",
  "test_fraction",
  "label_map",
  "crop_foreground",
  "ct_window",
  "image_order",
  "description",
  "citation",
  "license",
  "homepage",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]*")
_CHANNEL_SUFFIX = re.compile(r"(.+)_(\d{4})")
# The placeholder classes of a label-free folder (its labels are all 0).
UNLABELLED_CLASS_NAMES = ("background", "unlabelled")
# Data files of MetaImage headers; not cases of their own.
_METAIMAGE_DATA = (".raw", ".zraw")
_ALL_SUFFIXES = tuple(
  sorted(
    medical_io.NIFTI_SUFFIXES
    + medical_io.METAIMAGE_SUFFIXES
    + medical_io.IMAGE_SUFFIXES
    + medical_io.TIFF_SUFFIXES
    + medical_io.DICOM_SUFFIXES,
    key=len,
    reverse=True,  # ".nii.gz" before ".gz"-less ".nii".
  )
)

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Point `manual_dir` at your own data folder holding `{DATASET_JSON}`,
`{IMAGES_DIR}/` and `{LABELS_DIR}/`:
  {IMAGES_DIR}/case1.nii.gz (or case1_0000.nii.gz, case1_0001.nii.gz, ... one
    file per channel; or case1/ holding a DICOM series; or .png, .tif, .mha)
  {LABELS_DIR}/case1.nii.gz (same grid as the image)
  {DATASET_JSON}: {{"name": "my_data", "spatial_dims": 3,
    "channel_names": ["CT"], "class_names": ["background", "organ"],
    "normalization": ["ct"], "validation_fraction": 0.2}}
See medseg_jax/data/from_folder/from_folder.py for every key."""


class DatasetJsonError(ValueError):
  """`dataset.json` is missing a key, has an unknown one or a bad value."""


@dataclasses.dataclass(frozen=True)
class FolderDataset:
  """The validated content of a folder's `dataset.json`.

  Attributes:
    folder: the data folder (holding `images/`, `labels/`, `dataset.json`).
    name: TFDS config name.
    spatial_dims: 2 or 3.
    channel_names: image channels, in order.
    class_names: class of each label id, background first.
    normalization: one `preprocessing.MODALITY_NORMALIZATION` entry per
      channel (or one for all).
    spacing: target voxel size in mm (array axis order), or None to keep
      each case's own.
    splits: explicit split -> case ids, or None to split by fractions.
    validation_fraction: share of cases (sorted by id) for `validation`.
    test_fraction: share of cases (the last by id) for `test`.
    label_map: raw label value -> class id, or None for labels that are
      class ids already.
    crop_foreground: crop each case to its nonzero bounding box.
    ct_window: clip range of `"ct"` channels, in HU.
    image_order: spline order of image resampling (1 or 3).
    description: free text for the DatasetInfo.
    citation: BibTeX for the DatasetInfo.
    license: licence text for the DatasetInfo.
    homepage: URL for the DatasetInfo.
    labelled: False for a folder of images alone (no `labels/`); its
      examples get all-zero labels and `UNLABELLED_CLASS_NAMES`.
  """

  folder: pathlib.Path
  name: str
  spatial_dims: int
  channel_names: tuple[str, ...]
  class_names: tuple[str, ...]
  normalization: tuple[str, ...] = ("zscore",)
  spacing: tuple[float, ...] | None = None
  splits: dict[str, tuple[str, ...]] | None = None
  validation_fraction: float = 0.0
  test_fraction: float = 0.0
  label_map: dict[int, int] | None = None
  crop_foreground: bool = False
  ct_window: tuple[float, float] | None = None
  image_order: int = 1
  description: str = ""
  citation: str = ""
  license: str = ""
  homepage: str = ""
  labelled: bool = True

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def tfds_name(self) -> str:
    return f"from_folder/{self.name}"

  def preprocessing(self) -> preprocessing.Preprocessing:
    """The build-time steps this dataset asks for."""
    return preprocessing.Preprocessing(
      canonical=True,
      spacing=self.spacing,
      image_order=self.image_order,
      normalization=self.normalization,
      ct_window=self.ct_window,
      crop_foreground=self.crop_foreground,
    )

  def to_json(self) -> str:
    """Canonical JSON of the settings (not the folder), to spot changes."""
    fields = dataclasses.asdict(self)
    del fields["folder"]
    if self.label_map is not None:
      fields["label_map"] = {str(k): v for k, v in self.label_map.items()}
    return json.dumps(fields, sort_keys=True)


# ------------------------------------------------------------ dataset.json


def load_dataset_json(folder: PathLike) -> FolderDataset:
  """Reads and validates `<folder>/dataset.json`.

  Raises:
    FileNotFoundError: if the folder or its `dataset.json` is missing.
    DatasetJsonError: for invalid JSON, a missing or unknown key, or a bad
      value; the message names the file and the key.
  """
  folder = pathlib.Path(folder)
  path = folder / DATASET_JSON
  if not path.is_file():
    raise FileNotFoundError(
      f"No {DATASET_JSON} in {folder}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )
  try:
    raw = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DatasetJsonError(f"{path}: not valid JSON ({e}).") from e

  def fail(key: str, problem: str) -> DatasetJsonError:
    return DatasetJsonError(f"{path}: {key!r} {problem}")

  if not isinstance(raw, dict):
    raise DatasetJsonError(f"{path}: expected a JSON object {{...}}.")
  labelled = raw.get("labelled", True)
  if not isinstance(labelled, bool):
    raise DatasetJsonError(
      f"{path}: 'labelled' is {labelled!r}; expected true or false."
    )
  required = _REQUIRED_KEYS if labelled else _REQUIRED_KEYS[:-1]
  missing = [k for k in required if k not in raw]
  if missing:
    raise DatasetJsonError(
      f"{path}: missing required key(s) {', '.join(map(repr, missing))}; "
      f"required: {', '.join(required)}."
    )
  unknown = sorted(set(raw) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
  if unknown:
    raise DatasetJsonError(
      f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; valid: "
      f"{', '.join(_REQUIRED_KEYS + _OPTIONAL_KEYS)}."
    )

  name = raw["name"]
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise fail(
      "name",
      f"is {name!r}; expected letters, digits, '_' or '-' (it becomes the "
      "TFDS config name).",
    )
  spatial_dims = raw["spatial_dims"]
  if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
    raise fail("spatial_dims", f"is {spatial_dims!r}; expected 2 or 3.")
  channel_names = _names(raw["channel_names"], "channel_names", fail, 1)
  class_names = _names(
    raw.get("class_names", list(UNLABELLED_CLASS_NAMES)),
    "class_names",
    fail,
    2,
  )

  normalization = raw.get("normalization", ["zscore"])
  if isinstance(normalization, str):
    normalization = [normalization]
  valid = preprocessing.MODALITY_NORMALIZATION
  if (
    not isinstance(normalization, list)
    or len(normalization) not in (1, len(channel_names))
    or any(m not in valid for m in normalization)
  ):
    raise fail(
      "normalization",
      f"is {normalization!r}; expected one entry, or one per channel "
      f"({len(channel_names)}), each of {', '.join(valid)}.",
    )

  spacing = raw.get("spacing")
  if spacing is not None:
    if (
      not isinstance(spacing, list)
      or len(spacing) != spatial_dims
      or not all(_is_number(v) and v > 0 for v in spacing)
    ):
      raise fail(
        "spacing",
        f"is {spacing!r}; expected {spatial_dims} positive numbers (mm, "
        "array axis order) or null.",
      )
    spacing = tuple(float(v) for v in spacing)

  fractions = {}
  for key in ("validation_fraction", "test_fraction"):
    value = raw.get(key, 0.0)
    if not _is_number(value) or not 0 <= value < 1:
      raise fail(key, f"is {value!r}; expected a number in [0, 1).")
    fractions[key] = float(value)
  if sum(fractions.values()) >= 1:
    raise DatasetJsonError(
      f"{path}: validation_fraction + test_fraction must be below 1."
    )
  splits = raw.get("splits")
  if splits is not None:
    if any(fractions.values()):
      raise fail(
        "splits", "cannot be combined with validation_fraction/test_fraction."
      )
    splits = _explicit_splits(splits, fail)

  label_map = raw.get("label_map")
  if label_map is not None:
    label_map = _label_map(label_map, len(class_names), fail)

  crop_foreground = raw.get("crop_foreground", False)
  if not isinstance(crop_foreground, bool):
    raise fail("crop_foreground", f"is {crop_foreground!r}; expected a bool.")
  ct_window = raw.get("ct_window")
  if ct_window is not None:
    if (
      not isinstance(ct_window, list)
      or len(ct_window) != 2
      or not all(_is_number(v) for v in ct_window)
      or ct_window[0] >= ct_window[1]
    ):
      raise fail("ct_window", f"is {ct_window!r}; expected [low, high] HU.")
    ct_window = (float(ct_window[0]), float(ct_window[1]))
  image_order = raw.get("image_order", 1)
  if image_order not in (1, 3) or isinstance(image_order, bool):
    raise fail("image_order", f"is {image_order!r}; expected 1 or 3.")
  texts = {}
  for key in ("description", "citation", "license", "homepage"):
    value = raw.get(key, "")
    if not isinstance(value, str):
      raise fail(key, f"is {value!r}; expected a string.")
    texts[key] = value

  return FolderDataset(
    folder=folder,
    name=name,
    spatial_dims=spatial_dims,
    channel_names=channel_names,
    class_names=class_names,
    normalization=tuple(normalization),
    spacing=spacing,
    splits=splits,
    validation_fraction=fractions["validation_fraction"],
    test_fraction=fractions["test_fraction"],
    label_map=label_map,
    crop_foreground=crop_foreground,
    ct_window=ct_window,
    image_order=image_order,
    labelled=labelled,
    **texts,
  )


def _is_number(value: Any) -> bool:
  return (
    isinstance(value, (int, float))
    and not isinstance(value, bool)
    and math.isfinite(value)
  )


def _names(value: Any, key: str, fail: Any, minimum: int) -> tuple[str, ...]:
  if (
    not isinstance(value, list)
    or len(value) < minimum
    or not all(isinstance(v, str) and v for v in value)
    or len(set(value)) != len(value)
  ):
    raise fail(
      key,
      f"is {value!r}; expected a list of at least {minimum} distinct "
      "non-empty strings.",
    )
  return tuple(value)


def _explicit_splits(value: Any, fail: Any) -> dict[str, tuple[str, ...]]:
  if not isinstance(value, dict) or not value:
    raise fail("splits", f"is {value!r}; expected {{split: [case ids]}}.")
  seen: dict[str, str] = {}
  splits = {}
  for split, ids in value.items():
    if not _SPLIT_NAME.fullmatch(split):
      raise fail(
        "splits", f"has split name {split!r}; expected e.g. train, test."
      )
    if not isinstance(ids, list) or not all(
      isinstance(i, str) and i for i in ids
    ):
      raise fail(
        "splits", f"[{split!r}] is {ids!r}; expected a list of case ids."
      )
    for case_id in ids:
      if case_id in seen:
        raise fail(
          "splits",
          f"lists case {case_id!r} in both {seen[case_id]!r} and {split!r}.",
        )
      seen[case_id] = split
    splits[split] = tuple(ids)
  return splits


def _label_map(value: Any, num_classes: int, fail: Any) -> dict[int, int]:
  if not isinstance(value, dict) or not value:
    raise fail("label_map", f"is {value!r}; expected {{raw value: class}}.")
  mapping = {}
  for raw, mapped in value.items():
    try:
      raw_value = int(raw)
    except ValueError:
      raise fail(
        "label_map", f"has key {raw!r}; expected an integer raw value."
      ) from None
    if (
      not isinstance(mapped, int)
      or isinstance(mapped, bool)
      or not 0 <= mapped < num_classes
    ):
      raise fail(
        "label_map",
        f"maps {raw!r} to {mapped!r}; expected a class id in "
        f"[0, {num_classes}).",
      )
    mapping[raw_value] = mapped
  return mapping


# ------------------------------------------------------------------ cases


def _stem(path: pathlib.Path) -> str | None:
  """Case stem of a supported file or directory; None if unsupported."""
  if path.is_dir():
    return path.name
  name = path.name.lower()
  for suffix in _ALL_SUFFIXES:
    if name.endswith(suffix) and len(name) > len(suffix):
      return path.name[: -len(suffix)]
  return None


def _listing(directory: pathlib.Path) -> dict[str, list[pathlib.Path]]:
  """Stem -> entries of `directory`; unsupported files are errors."""
  if not directory.is_dir():
    raise FileNotFoundError(
      f"No {directory.name}/ folder in {directory.parent}.\n"
      f"{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )
  entries = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
  has_mhd = any(p.name.lower().endswith(".mhd") for p in entries)
  stems: dict[str, list[pathlib.Path]] = {}
  for entry in entries:
    if has_mhd and entry.name.lower().endswith(_METAIMAGE_DATA):
      continue
    stem = _stem(entry)
    if stem is None:
      raise checks.InvalidExampleError(
        f"Invalid example {entry.name!r} ({entry}): unsupported file type; "
        f"supported: {', '.join(medical_io.SUPPORTED)}."
      )
    stems.setdefault(stem, []).append(entry)
  return stems


def find_cases(dataset: FolderDataset) -> list[medical_builder.Case]:
  """Pairs `images/` with `labels/` by name; cases sorted by id.

  A label-free folder (`dataset.labelled` False) gives cases without a
  label, and does not read `labels/`.

  Raises:
    FileNotFoundError: if `images/` or `labels/` is missing, or empty.
    InvalidExampleError: naming the file, for an unsupported file type, an
      image without a label, a label without an image, two files for one
      channel, or channel numbers with a gap.
  """
  images_dir = dataset.folder / IMAGES_DIR
  labels_dir = dataset.folder / LABELS_DIR
  image_stems = _listing(images_dir)
  label_stems = _listing(labels_dir) if dataset.labelled else {}
  for stem, paths in label_stems.items():
    if len(paths) > 1:
      raise checks.InvalidExampleError(
        f"Invalid example {stem!r} ({checks.describe_paths(paths)}): two "
        "label files for one case."
      )

  # case id -> [(channel number or None for "the whole file", path)].
  channels: dict[str, list[tuple[int | None, pathlib.Path]]] = {}
  for stem, paths in image_stems.items():
    match = _CHANNEL_SUFFIX.fullmatch(stem)
    for path in paths:
      if stem in label_stems or match is None:
        channels.setdefault(stem, []).append((None, path))
      else:
        channels.setdefault(match[1], []).append((int(match[2]), path))
  if not channels:
    raise FileNotFoundError(
      f"No images in {images_dir}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )

  cases = []
  for case_id in sorted(channels):
    entries = sorted(channels[case_id], key=lambda e: (e[0] or 0, e[1].name))
    paths = [p for _, p in entries]
    numbers = [n for n, _ in entries]
    if len(entries) > 1 and (None in numbers or len(set(numbers)) < len(paths)):
      raise checks.InvalidExampleError(
        f"Invalid example {case_id!r} ({checks.describe_paths(paths)}): "
        "several image files for one channel; name one file per channel "
        f"{case_id}_0000, {case_id}_0001, ..."
      )
    if None not in numbers and numbers != list(range(len(numbers))):
      missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
      raise checks.InvalidExampleError(
        f"Invalid example {case_id!r} ({checks.describe_paths(paths)}): "
        f"channel file(s) {', '.join(f'_{m:04d}' for m in missing)} missing."
      )
    labels = label_stems.get(case_id)
    if not dataset.labelled:
      labels = [None]
    elif labels is None:
      raise checks.InvalidExampleError(
        f"Invalid example {case_id!r} ({checks.describe_paths(paths)}): no "
        f"label file {labels_dir / case_id}.* for this image."
      )
    cases.append(
      medical_builder.Case(
        case_id=case_id, images=tuple(paths), label=labels[0]
      )
    )
  orphans = sorted(set(label_stems) - set(channels))
  if orphans:
    path = label_stems[orphans[0]][0]
    raise checks.InvalidExampleError(
      f"Invalid example {orphans[0]!r} ({path}): label without an image in "
      f"{images_dir} ({len(orphans)} such label(s): "
      f"{', '.join(orphans[:5])})."
    )
  return cases


def split_case_ids(
  dataset: FolderDataset, case_ids: Sequence[str]
) -> dict[str, list[str]]:
  """Split name -> case ids, from explicit lists or fractions.

  Splits without cases are left out. Cases that an explicit `splits` does
  not list are left out too, with a warning.

  Raises:
    InvalidExampleError: if `splits` names a case that is not in the
      folder, or the fractions leave no training case.
  """
  ids = sorted(case_ids)
  json_path = dataset.folder / DATASET_JSON
  if dataset.splits is not None:
    known = set(ids)
    for split, listed in dataset.splits.items():
      absent = [i for i in listed if i not in known]
      if absent:
        raise checks.InvalidExampleError(
          f"Invalid example {absent[0]!r} ({json_path}): split {split!r} "
          f"lists case(s) {', '.join(absent[:5])} that {IMAGES_DIR}/ does "
          "not hold."
        )
    assigned = {i for listed in dataset.splits.values() for i in listed}
    unlisted = [i for i in ids if i not in assigned]
    if unlisted:
      logging.warning(
        "%s: %d case(s) in no split are left out: %s",
        json_path,
        len(unlisted),
        ", ".join(unlisted[:10]),
      )
    return {
      split: list(listed) for split, listed in dataset.splits.items() if listed
    }

  def count(fraction: float) -> int:
    return max(1, round(len(ids) * fraction)) if fraction > 0 else 0

  num_test = count(dataset.test_fraction)
  num_validation = count(dataset.validation_fraction)
  num_train = len(ids) - num_validation - num_test
  if num_train < 1:
    raise checks.InvalidExampleError(
      f"Invalid example {dataset.name!r} ({json_path}): {len(ids)} case(s) "
      "are too few for the validation and test fractions; no training case "
      "is left."
    )
  splits = {
    "train": ids[:num_train],
    "validation": ids[num_train : num_train + num_validation],
    "test": ids[num_train + num_validation :],
  }
  return {split: listed for split, listed in splits.items() if listed}


# ---------------------------------------------------------------- builder


@dataclasses.dataclass(eq=False)
class FromFolderConfig(tfds.core.BuilderConfig):
  """A `from_folder` config: one user folder, described by its JSON.

  Attributes:
    dataset: the validated `dataset.json` (it names the config).
  """

  dataset: FolderDataset | None = None


class FromFolder(medical_builder.MedicalBuilder):
  """A user's own `images/` + `labels/` folder, 2-D or 3-D.

  Its config comes from the folder's `dataset.json`; make the builder with
  `builder_for(folder, data_dir)`. Once prepared, the dataset reads back
  without the raw folder as `tfds.data_source("from_folder/<name>", ...)`.
  """

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def __init__(self, *, config: Any = None, **kwargs: Any):
    if not isinstance(config, FromFolderConfig) or config.dataset is None:
      raise ValueError(
        f"from_folder/{config or '<name>'} needs its data folder: build it "
        "with medseg_jax.data.from_folder.builder_for(folder, data_dir) "
        "(or prepare(folder, data_dir)); once prepared, "
        "tfds.data_source('from_folder/<name>', data_dir=...) reads it."
      )
    super().__init__(config=config, **kwargs)

  @classmethod
  def spec_for(cls, config: FromFolderConfig) -> medical_builder.BuilderSpec:
    dataset = config.dataset
    description = dataset.description or (
      f"User data from {dataset.folder}: {dataset.spatial_dims}-D, channels "
      f"{', '.join(dataset.channel_names)}, classes "
      f"{', '.join(dataset.class_names)}."
    )
    return medical_builder.BuilderSpec(
      description=description,
      class_names=list(dataset.class_names),
      channel_names=list(dataset.channel_names),
      spatial_dims=dataset.spatial_dims,
      splits=None,  # From the folder's listing, see `split_case_ids`.
      needs_manual_dir=True,
      homepage=dataset.homepage,
      citation=dataset.citation,
      license=dataset.license,
      extra_metadata={"dataset_json": dataset.to_json()},
    )

  @property
  def dataset(self) -> FolderDataset:
    return self.builder_config.dataset

  @property
  def preprocessing(self) -> preprocessing.Preprocessing:
    return self.dataset.preprocessing()

  def _cases_per_split(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, list[medical_builder.Case]]:
    del dl_manager  # The config names the folder.
    cases = {c.case_id: c for c in find_cases(self.dataset)}
    splits = split_case_ids(self.dataset, list(cases))
    return {split: [cases[i] for i in ids] for split, ids in splits.items()}

  def _make_example(
    self, case: medical_builder.Case
  ) -> tuple[str, dict[str, Any]]:
    return case.case_id, self._read_case(
      case,
      label_map=self.dataset.label_map,
      labelled=self.dataset.labelled,
    )


def config_for(folder: PathLike) -> FromFolderConfig:
  """The builder config described by `<folder>/dataset.json`."""
  dataset = load_dataset_json(folder)
  return FromFolderConfig(
    name=dataset.name,
    version=VERSION,
    description=f"User data from {dataset.folder}.",
    dataset=dataset,
  )


def builder_for(folder: PathLike, data_dir: PathLike) -> FromFolder:
  """The `from_folder/<name>` builder of a folder, prepared or not.

  Raises:
    FileNotFoundError, DatasetJsonError: see `load_dataset_json`.
    ValueError: if the dataset was prepared in `data_dir` from a different
      `dataset.json` (rename it or delete the prepared directory).
  """
  builder = FromFolder(config=config_for(folder), data_dir=os.fspath(data_dir))
  if builder.is_prepared():
    stored = pathlib.Path(os.fspath(builder.data_path)) / "metadata.json"
    if stored.is_file():
      before = json.loads(stored.read_text()).get("dataset_json")
      if before is not None and before != builder.dataset.to_json():
        raise ValueError(
          f"{builder.dataset.tfds_name} in {builder.data_path} was built "
          f"from different settings than {builder.dataset.folder}/"
          f"{DATASET_JSON} now has; give the dataset a new name, or delete "
          "that directory to rebuild it."
        )
  return builder


def prepare(folder: PathLike, data_dir: PathLike) -> FromFolder:
  """Builds the folder's dataset into `data_dir` (a no-op once built)."""
  builder = builder_for(folder, data_dir)
  if not builder.is_prepared():
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
  return builder


def spec_from_folder(folder: PathLike) -> DatasetSpec:
  """The `DatasetSpec` of a folder (its split names need a file listing)."""
  config = config_for(folder)
  dataset = config.dataset
  cases = find_cases(dataset)
  splits = split_case_ids(dataset, [c.case_id for c in cases])
  spec = FromFolder.spec_for(config).dataset_spec(
    dataset.tfds_name, splits=tuple(splits)
  )
  return dataclasses.replace(spec, labelled=dataset.labelled)
