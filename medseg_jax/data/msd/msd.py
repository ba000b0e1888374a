"""TFDS builder `msd`: the ten tasks of the Medical Segmentation Decathlon.

One builder with one config per task (`msd/task01_braintumour` ...
`msd/task10_colon`). Each task is a folder `TaskXX_Name/` holding
`dataset.json`, `imagesTr/` and `labelsTr/` (NIfTI, one file per case,
paired by name) and unlabelled `imagesTs/`. Multi-modal tasks (brain
tumour: 4 MRI sequences, prostate: T2 and ADC) store one 4-D NIfTI per case
whose last axis is the modality; it becomes the channel axis.

  from medseg_jax.data import registry
  registry.prepare("msd/task04_hippocampus", data_dir)
  train = registry.data_source("msd/task04_hippocampus", "train", data_dir)

Without `manual_dir`, the task's tar archive is downloaded from the public
AWS mirror that MONAI uses; with a `manual_dir` holding the extracted
`TaskXX_Name/` folder (or the `TaskXX_Name.tar` archive), that is used.

The decathlon's own test images have no public labels, so the labelled
`imagesTr` cases are split into train / validation / test here (about
70 / 10 / 20 %, see `split_cases`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any
from typing import NoReturn

import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import medical_builder
from medseg_jax.data import preprocessing

URL_TEMPLATE = "https://msd-for-monai.s3-us-west-2.amazonaws.com/{folder}.tar"
SPLITS = ("train", "validation", "test")
VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.2
_NIFTI = (".nii.gz", ".nii")

_CITATION = """\
@article{antonelli2022medical,
  title={The Medical Segmentation Decathlon},
  author={Antonelli, Michela and Reinke, Annika and Bakas, Spyridon and
          Farahani, Keyvan and Kopp-Schneider, Annette and Landman, Bennett A
          and Litjens, Geert and Menze, Bjoern and Ronneberger, Olaf and
          Summers, Ronald M and others},
  journal={Nature Communications},
  volume={13},
  number={1},
  pages={4128},
  year={2022},
  doi={10.1038/s41467-022-30695-9}
}
@article{simpson2019large,
  title={A large annotated medical image dataset for the development and
         evaluation of segmentation algorithms},
  author={Simpson, Amber L and Antonelli, Michela and Bakas, Spyridon and
          Bilello, Michel and Farahani, Keyvan and van Ginneken, Bram and
          Kopp-Schneider, Annette and Landman, Bennett A and Litjens, Geert
          and Menze, Bjoern and others},
  journal={arXiv preprint arXiv:1902.09063},
  year={2019}
}
"""

_LICENSE = (
  "Creative Commons Attribution-ShareAlike 4.0 International (CC-BY-SA 4.0), "
  "as stated in each task's dataset.json. Cite Antonelli et al., Nature "
  "Communications 13:4128 (2022) and Simpson et al., arXiv:1902.09063 "
  "(2019); the brain tumour task also asks for the BraTS citations listed "
  "at http://medicaldecathlon.com/."
)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Optional: without a manual_dir each task is downloaded from
https://msd-for-monai.s3-us-west-2.amazonaws.com/<TaskXX_Name>.tar (the
public mirror used by MONAI; the originals are linked from
http://medicaldecathlon.com/). To use files you already have, point
`manual_dir` at a folder holding the extracted task folder (or its .tar):

  <manual_dir>/Task04_Hippocampus/dataset.json
  <manual_dir>/Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz ...
  <manual_dir>/Task04_Hippocampus/labelsTr/hippocampus_001.nii.gz ...

Folder names: Task01_BrainTumour, Task02_Heart, Task03_Liver,
Task04_Hippocampus, Task05_Prostate, Task06_Lung, Task07_Pancreas,
Task08_HepaticVessel, Task09_Spleen, Task10_Colon. Files whose names start
with "._" (macOS metadata in the original archives) and imagesTs/ (no
labels) are ignored. Licence: CC-BY-SA 4.0."""


@dataclasses.dataclass(eq=False)
class MsdConfig(tfds.core.BuilderConfig):
  """One decathlon task.

  Attributes:
    folder: the task's folder and archive name, e.g. `"Task04_Hippocampus"`.
    channel_names: the `modality` entries of dataset.json, in channel order.
    class_names: the `labels` entries of dataset.json, by class id.
    normalization: `"ct"` (clip to `ct_window`, then z-score) or `"mri"`
      (z-score over nonzero voxels), for every channel.
    ct_window: HU clip range of `"ct"` tasks.
    crop_foreground: crop each case to the bounding box of nonzero voxels.
    spacing: target voxel size in mm (RAS+ axis order), or None to keep each
      case's own.
    num_training: labelled cases in the full release (for the description).
  """

  folder: str = ""
  channel_names: tuple[str, ...] = ()
  class_names: tuple[str, ...] = ()
  normalization: str = "mri"
  ct_window: tuple[float, float] | None = None
  crop_foreground: bool = False
  spacing: tuple[float, float, float] | None = None
  num_training: int = 0

  @property
  def url(self) -> str:
    return URL_TEMPLATE.format(folder=self.folder)

  @property
  def preprocess(self) -> preprocessing.Preprocessing:
    return preprocessing.Preprocessing(
      canonical=True,
      spacing=self.spacing,
      image_order=1,
      normalization=(self.normalization,),
      ct_window=self.ct_window,
      crop_foreground=self.crop_foreground,
      crop_margin=2,
    )


def split_sizes(num_cases: int) -> dict[str, int]:
  """Cases per split: about 70 / 10 / 20 %, at least one each from 3 cases.

  Raises:
    ValueError: for fewer than 3 cases.
  """
  if num_cases < 3:
    raise ValueError(
      f"{num_cases} labelled case(s); at least 3 are needed for the train, "
      "validation and test splits."
    )
  test = max(1, int(TEST_FRACTION * num_cases + 0.5))
  validation = max(1, int(VALIDATION_FRACTION * num_cases + 0.5))
  return {
    "train": num_cases - validation - test,
    "validation": validation,
    "test": test,
  }


def _spread(count: int, total: int) -> list[int]:
  """`count` positions evenly spread over `range(total)`."""
  return [int((k + 0.5) * total / count) for k in range(count)]


def case_sort_key(case_id: str) -> tuple[Any, ...]:
  """Natural order: `liver_2` before `liver_10`."""
  return tuple(
    (0, int(part)) if part.isdigit() else (1, part)
    for part in re.split(r"(\d+)", case_id)
    if part
  )


def split_cases(
  cases: Sequence[medical_builder.Case],
) -> dict[str, list[medical_builder.Case]]:
  """Splits labelled cases deterministically into train/validation/test.

  Cases are put in natural order of their ids; the test split takes
  `split_sizes(n)["test"]` cases evenly spaced through that order, the
  validation split takes its share evenly spaced through the cases left,
  and the train split the rest. Spreading the held-out cases over the whole
  id range keeps them from all coming from one end of the release (where
  ids may follow acquisition site or grade).
  """
  ordered = sorted(cases, key=lambda c: case_sort_key(c.case_id))
  sizes = split_sizes(len(ordered))
  test_positions = set(_spread(sizes["test"], len(ordered)))
  rest = [i for i in range(len(ordered)) if i not in test_positions]
  validation_positions = {
    rest[i] for i in _spread(sizes["validation"], len(rest))
  }
  splits: dict[str, list[medical_builder.Case]] = {s: [] for s in SPLITS}
  for position, case in enumerate(ordered):
    if position in test_positions:
      splits["test"].append(case)
    elif position in validation_positions:
      splits["validation"].append(case)
    else:
      splits["train"].append(case)
  return splits


def _describe_splits(num_cases: int) -> str:
  sizes = split_sizes(num_cases)
  return " / ".join(f"{sizes[s]} {s}" for s in SPLITS)


def _config(
  name: str,
  folder: str,
  summary: str,
  channel_names: tuple[str, ...],
  class_names: tuple[str, ...],
  num_training: int,
  *,
  ct_window: tuple[float, float] | None = None,
  crop_foreground: bool = False,
) -> MsdConfig:
  normalization = "ct" if ct_window is not None else "mri"
  if normalization == "ct":
    how = (
      f"CT clipped to [{ct_window[0]:g}, {ct_window[1]:g}] HU, then z-scored"
    )
  else:
    how = "MRI z-scored per channel over nonzero voxels"
  if crop_foreground:
    how += "; cropped to the nonzero bounding box (2-voxel margin)"
  description = (
    f"{folder}: {summary} Channels: {', '.join(channel_names)}. Classes: "
    + ", ".join(f"{i} {n}" for i, n in enumerate(class_names))
    + f". {how}. The {num_training} labelled cases of the release are "
    f"split {_describe_splits(num_training)}."
  )
  return MsdConfig(
    name=name,
    description=description,
    folder=folder,
    channel_names=channel_names,
    class_names=class_names,
    normalization=normalization,
    ct_window=ct_window,
    crop_foreground=crop_foreground,
    num_training=num_training,
  )


# Soft-tissue abdominal window (W400, L40) for abdominal organs and their
# tumours; wider for contrast-filled hepatic vessels and for lung tumours,
# which sit in air-filled parenchyma.
_ABDOMEN = (-160.0, 240.0)

BUILDER_CONFIGS = (
  _config(
    "task01_braintumour",
    "Task01_BrainTumour",
    "glioma sub-regions on multi-parametric MRI (BraTS 2016/2017).",
    ("FLAIR", "T1w", "t1gd", "T2w"),
    ("background", "edema", "non-enhancing tumor", "enhancing tumour"),
    484,
    crop_foreground=True,
  ),
  _config(
    "task02_heart",
    "Task02_Heart",
    "left atrium on mono-modal MRI (King's College London).",
    ("MRI",),
    ("background", "left atrium"),
    20,
  ),
  _config(
    "task03_liver",
    "Task03_Liver",
    "liver and liver tumours on contrast-enhanced CT (LiTS).",
    ("CT",),
    ("background", "liver", "cancer"),
    131,
    ct_window=_ABDOMEN,
  ),
  _config(
    "task04_hippocampus",
    "Task04_Hippocampus",
    "anterior and posterior hippocampus on T1 MRI crops (Vanderbilt).",
    ("MRI",),
    ("background", "Anterior", "Posterior"),
    260,
  ),
  _config(
    "task05_prostate",
    "Task05_Prostate",
    "prostate peripheral and transition zones on T2 and ADC MRI (Radboud).",
    ("T2", "ADC"),
    ("background", "PZ", "TZ"),
    32,
  ),
  _config(
    "task06_lung",
    "Task06_Lung",
    "non-small cell lung tumours on CT (TCIA).",
    ("CT",),
    ("background", "cancer"),
    63,
    ct_window=(-1000.0, 400.0),
  ),
  _config(
    "task07_pancreas",
    "Task07_Pancreas",
    "pancreas and pancreatic tumours on portal-venous CT (MSKCC).",
    ("CT",),
    ("background", "pancreas", "cancer"),
    281,
    ct_window=_ABDOMEN,
  ),
  _config(
    "task08_hepaticvessel",
    "Task08_HepaticVessel",
    "hepatic vessels and liver tumours on contrast CT (MSKCC).",
    ("CT",),
    ("background", "Vessel", "Tumour"),
    303,
    ct_window=(-100.0, 300.0),
  ),
  _config(
    "task09_spleen",
    "Task09_Spleen",
    "spleen on portal-venous CT (MSKCC).",
    ("CT",),
    ("background", "spleen"),
    41,
    ct_window=_ABDOMEN,
  ),
  _config(
    "task10_colon",
    "Task10_Colon",
    "primary colon cancer on CT (MSKCC).",
    ("CT",),
    ("background", "colon cancer primaries"),
    126,
    ct_window=_ABDOMEN,
  ),
)
CONFIGS = {config.name: config for config in BUILDER_CONFIGS}

_DESCRIPTION = """\
The Medical Segmentation Decathlon (Simpson et al. 2019, Antonelli et al.
2022): ten 3-D segmentation tasks on CT and MRI, one builder config each.
Multi-modal tasks (brain tumour, prostate) stack their modalities as image
channels, in the order of dataset.json's `modality`; class names are
dataset.json's `labels`, which the build checks against the config.

Preprocessing at build time: reorientation to RAS+ (array axes along
+x Right, +y Anterior, +z Superior; a permutation of voxels, no
interpolation), native voxel spacing kept (stored in `spacing`), per-channel
intensity normalisation by modality: CT clipped to a task window then
z-scored over the volume; MRI z-scored over nonzero voxels (zeros stay 0).
The brain tumour task is cropped to the brain's bounding box. `affine`,
`original_affine` and `original_shape` place every grid in the world, so
predictions can be mapped back onto the source files.

Splits: the decathlon's test images (imagesTs) have no public labels and are
not used. The labelled imagesTr cases are split deterministically: in
natural order of case id (e.g. hippocampus_001, hippocampus_002, ...), 20 %
evenly spaced through that order form `test`, 10 % evenly spaced through
the remaining cases form `validation`, and the rest `train` (rounded
half up, at least one case in each split). Files starting with "._" (macOS
metadata in the original archives) are ignored.
"""


def _fail(path: os.PathLike[str] | str, problem: str) -> NoReturn:
  raise checks.InvalidExampleError(f"{os.fspath(path)}: {problem}")


def read_dataset_json(
  task_dir: os.PathLike[str] | str, config: MsdConfig
) -> dict[str, Any]:
  """Reads a task's dataset.json and checks it against `config`.

  Raises:
    InvalidExampleError: naming dataset.json, if it is missing, not JSON,
      or its `modality` or `labels` differ from the config's channels and
      classes.
  """
  path = pathlib.Path(task_dir) / "dataset.json"
  if not path.is_file():
    _fail(path, f"missing; every {config.folder} folder has one.")
  try:
    meta = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    _fail(path, f"not readable JSON ({e}).")
  if not isinstance(meta, dict):
    _fail(path, "not a JSON object.")
  for key, expected in (
    ("modality", config.channel_names),
    ("labels", config.class_names),
  ):
    entries = meta.get(key)
    if not isinstance(entries, dict):
      _fail(path, f"has no {key!r} object; expected {_as_json(expected)}.")
    try:
      found = tuple(
        str(entries[k]).strip()
        for k in sorted(entries, key=lambda k: int(str(k)))
      )
      keys = sorted(int(str(k)) for k in entries)
    except ValueError:
      _fail(path, f"{key!r} keys {sorted(entries)} are not integers.")
    if keys != list(range(len(expected))) or found != tuple(expected):
      _fail(
        path,
        f"{key!r} is {json.dumps(entries)}; task {config.folder} (config "
        f"{config.name}) expects {_as_json(expected)}. Is this the right "
        "task folder?",
      )
  return meta


def _as_json(names: Sequence[str]) -> str:
  return json.dumps({str(i): n for i, n in enumerate(names)})


def _is_nifti(path: pathlib.Path) -> bool:
  return (
    path.is_file()
    and not path.name.startswith("._")
    and path.name.endswith(_NIFTI)
  )


def _case_id(name: str) -> str:
  for suffix in _NIFTI:
    if name.endswith(suffix):
      return name[: -len(suffix)]
  return name


def find_cases(task_dir: os.PathLike[str] | str) -> list[medical_builder.Case]:
  """Lists the labelled cases of a task folder.

  Every NIfTI in `imagesTr/` (except macOS `._*` files) is a case; its
  label is the file of the same name in `labelsTr/`. A missing label is
  reported when the case is built (the error names the expected file).

  Raises:
    FileNotFoundError: if `imagesTr/` is missing or holds no NIfTI files.
  """
  task_dir = pathlib.Path(task_dir)
  images_dir = task_dir / "imagesTr"
  if not images_dir.is_dir():
    raise FileNotFoundError(
      f"{images_dir} does not exist.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )
  images = sorted(p for p in images_dir.iterdir() if _is_nifti(p))
  if not images:
    raise FileNotFoundError(
      f"No NIfTI images in {images_dir}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )
  return [
    medical_builder.Case(
      case_id=_case_id(image.name),
      images=(image,),
      label=task_dir / "labelsTr" / image.name,
    )
    for image in images
  ]


def _task_dir_under(root: pathlib.Path, folder: str) -> pathlib.Path | None:
  """The task folder `folder` at or just under `root`, if any.

  Looks at `root/folder`, `root/folder/folder` (an archive extracted into
  a folder of its own name) and `root` itself, preferring one that holds
  dataset.json or imagesTr/.
  """
  candidates = [
    path
    for path in (root / folder, root / folder / folder, root)
    if path.name == folder and path.is_dir()
  ]
  for path in candidates:
    if (path / "dataset.json").exists() or (path / "imagesTr").is_dir():
      return path
  return candidates[0] if candidates else None


class Msd(medical_builder.MedicalBuilder):
  """Medical Segmentation Decathlon, ten 3-D tasks as builder configs."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = list(BUILDER_CONFIGS)
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  @classmethod
  def spec_for(cls, config: MsdConfig) -> medical_builder.BuilderSpec:
    return medical_builder.BuilderSpec(
      description=_DESCRIPTION,
      class_names=config.class_names,
      channel_names=config.channel_names,
      spatial_dims=3,
      splits=SPLITS,
      homepage="http://medicaldecathlon.com/",
      citation=_CITATION,
      license=_LICENSE,
      extra_metadata={"task": config.folder},
    )

  @property
  def preprocessing(self) -> preprocessing.Preprocessing:
    return self.builder_config.preprocess

  def _cases_per_split(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, list[medical_builder.Case]]:
    config = self.builder_config
    task_dir = self._manual_task_dir(dl_manager)
    if task_dir is None:
      extracted = pathlib.Path(
        os.fspath(dl_manager.download_and_extract(config.url))
      )
      task_dir = _task_dir_under(extracted, config.folder)
      if task_dir is None:
        raise FileNotFoundError(
          f"The archive {config.url} extracted to {extracted} holds no "
          f"{config.folder}/ folder."
        )
    read_dataset_json(task_dir, config)
    return split_cases(find_cases(task_dir))

  def _manual_task_dir(
    self, dl_manager: tfds.download.DownloadManager
  ) -> pathlib.Path | None:
    """The task folder in the manual dir (extracting a .tar there)."""
    manual = medical_builder.manual_dir_or_none(dl_manager)
    if manual is None:
      return None
    folder = self.builder_config.folder
    task_dir = _task_dir_under(manual, folder)
    if task_dir is not None:
      return task_dir
    archive = manual / f"{folder}.tar"
    if archive.is_file():
      extracted = pathlib.Path(os.fspath(dl_manager.extract(archive)))
      return _task_dir_under(extracted, folder)
    return None
