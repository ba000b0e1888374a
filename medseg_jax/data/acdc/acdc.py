"""TFDS builder for `acdc`: cardiac cine MRI at end-diastole and end-systole.

ACDC (Bernard et al. 2018): short-axis cine MRI of 150 patients from the
University Hospital of Dijon, five groups of 30 (NOR normal, MINF previous
myocardial infarction, DCM dilated cardiomyopathy, HCM hypertrophic
cardiomyopathy, RV abnormal right ventricle). Two frames per patient are
labelled, end-diastole (ED) and end-systole (ES), with 0 background, 1 right
ventricle cavity, 2 myocardium, 3 left ventricle cavity. This builder makes
one 3-D example per labelled frame, `patientNNN_ED` and `patientNNN_ES`:

  image:  f32[X, Y, Z, 1]  z-scored inside the nonzero voxels, RAS+ axes
  label:  u8[X, Y, Z]
  group:  text             pathology group from Info.cfg ("" if absent)
  phase:  text             "ED" or "ES"

plus the shared features of the medical format (see `medical_builder`).
Slices are thick (5-10 mm) and in-plane pixels about 1.4-1.7 mm; the default
config `native` keeps each case's own grid, `AcdcConfig(spacing=...)`
resamples.

  from medseg_jax.data import registry
  registry.prepare("acdc", data_dir, manual_dir="/data/ACDC")
  train = registry.data_source("acdc", "train", data_dir)
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any
from typing import NoReturn

import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import medical_builder
from medseg_jax.data import preprocessing

CLASS_NAMES = ("background", "right_ventricle", "myocardium", "left_ventricle")
CHANNEL_NAMES = ("cine_MRI",)
PHASES = ("ED", "ES")
GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
# Split of the 100 `training/` patients by number; `testing/` is the test
# split (patients 101-150, labelled in the public release).
TRAIN_PATIENTS = range(1, 81)
VALIDATION_PATIENTS = range(81, 101)
SPLITS = ("train", "validation", "test")

HOMEPAGE = "https://humanheart-project.creatis.insa-lyon.fr/database/"

_CITATION = """\
@article{bernard2018deep,
  title={Deep Learning Techniques for Automatic MRI Cardiac Multi-Structures
         Segmentation and Diagnosis: Is the Problem Solved?},
  author={Bernard, Olivier and Lalande, Alain and Zotti, Clement and
          Cervenansky, Frederick and Yang, Xin and Heng, Pheng-Ann and
          Cetin, Irem and Lekadir, Karim and Camara, Oscar and
          Gonzalez Ballester, Miguel Angel and others},
  journal={IEEE Transactions on Medical Imaging},
  volume={37},
  number={11},
  pages={2514--2525},
  year={2018},
  doi={10.1109/TMI.2018.2837502}
}
"""

_LICENSE = (
  "Research use, non-commercial, under the terms of the CREATIS data "
  "portal (humanheart-project.creatis.insa-lyon.fr; the dataset is "
  "distributed there under CC BY-NC-SA 4.0). Any use must cite Bernard et "
  "al., IEEE TMI 37(11):2514-2525 (2018)."
)

MANUAL_DOWNLOAD_INSTRUCTIONS = (
  f"""\
ACDC needs a (free) account: register at {HOMEPAGE}, open the ACDC
collection and download the whole `database` folder (about 2.3 GB zipped),
then unzip it. Point `manual_dir` at the folder that holds `training/` and
`testing/`, or at its parent that holds `database/`:
  database/training/patient001/Info.cfg
  database/training/patient001/patient001_frame01.nii.gz
  database/training/patient001/patient001_frame01_gt.nii.gz
  database/training/patient001/patient001_frame12.nii.gz   (the ES frame)
  database/training/patient001/patient001_frame12_gt.nii.gz
  ...  patient001 .. patient100
  database/testing/patient101/...  patient101 .. patient150 (with _gt files)
Info.cfg gives the ED and ES frame numbers (`ED: 1`, `ES: 12`) and the
pathology group. Splits: train = training patients 1-80, validation =
81-100, test = the testing folder. Licence: """
  + _LICENSE
)

_DESCRIPTION = f"""\
ACDC cardiac cine MRI (Bernard et al. 2018): 150 patients in five pathology
groups ({", ".join(GROUPS)}), each with its end-diastolic (ED) and
end-systolic (ES) frame labelled: 0 background, 1 right ventricle cavity,
2 myocardium, 3 left ventricle cavity. One 3-D example per labelled frame
(case_id `patientNNN_ED` / `patientNNN_ES`), with the pathology group and the
phase as text features.

Preprocessing at build time: reorientation to RAS+ (axis permutations and
flips only), per-volume z-score over the nonzero voxels. The `native` config
keeps each case's grid (about 1.4-1.7 mm in-plane, 5-10 mm between slices);
`affine`, `original_affine` and `original_shape` place it.

Splits: train = training patients 1-80 (160 examples), validation = 81-100
(40), test = the 50 testing patients (100).
"""

_PATIENT = re.compile(r"patient(\d{3})")


@dataclasses.dataclass(eq=False)
class AcdcConfig(tfds.core.BuilderConfig):
  """A resampling choice.

  Attributes:
    spacing: target voxel size in mm, in array axis order after
      reorientation to RAS+; None keeps each case's own grid.
  """

  spacing: tuple[float, float, float] | None = None


@dataclasses.dataclass(frozen=True)
class Frame:
  """One labelled frame of one patient.

  Attributes:
    case: the image and label files, case_id `patientNNN_<phase>`.
    patient: the patient number (1-150).
    phase: "ED" or "ES".
    group: pathology group from Info.cfg ("" when Info.cfg has none).
  """

  case: medical_builder.Case
  patient: int
  phase: str
  group: str


def find_root(manual_dir: os.PathLike[str] | str) -> pathlib.Path:
  """The folder holding `training/` and `testing/` (at most 2 levels down).

  Raises:
    FileNotFoundError: if there is none, or it lacks `testing/`.
  """
  manual_dir = pathlib.Path(manual_dir)
  candidates = [manual_dir]
  for pattern in ("*", "*/*"):
    candidates += sorted(p for p in manual_dir.glob(pattern) if p.is_dir())
  for candidate in candidates:
    if (candidate / "training").is_dir():
      if not (candidate / "testing").is_dir():
        raise FileNotFoundError(
          f"ACDC folder {candidate} has `training/` but no `testing/`.\n"
          f"{MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
      return candidate
  raise FileNotFoundError(
    f"No ACDC `training/` folder under {manual_dir}.\n"
    f"{MANUAL_DOWNLOAD_INSTRUCTIONS}"
  )


def read_info(path: pathlib.Path, *, case_id: str) -> dict[str, str]:
  """Parses an Info.cfg (`Key: value` lines) and checks ED and ES.

  Raises:
    InvalidExampleError: naming the file, if it is missing or malformed, or
      its ED or ES entry is missing or not a positive frame number.
  """

  def fail(problem: str) -> NoReturn:
    raise checks.InvalidExampleError(
      f"Invalid example {case_id!r} ({path}): {problem}"
    )

  try:
    text = path.read_text(encoding="latin-1")
  except FileNotFoundError:
    fail("no Info.cfg; it gives the ED and ES frame numbers.")
  except OSError as e:
    fail(f"unreadable ({e}).")
  info = {}
  for line in text.splitlines():
    line = line.strip()
    if not line:
      continue
    if ":" not in line:
      fail(f"malformed line {line[:60]!r}; expected `Key: value`.")
    key, value = (part.strip() for part in line.split(":", 1))
    info[key] = value
  for phase in PHASES:
    if phase not in info:
      fail(f"no `{phase}:` entry (the {phase} frame number).")
    if not re.fullmatch(r"\d+", info[phase]) or int(info[phase]) < 1:
      fail(f"`{phase}: {info[phase]}` is not a frame number (1, 2, ...).")
  return info


def _nifti(folder: pathlib.Path, stem: str) -> pathlib.Path:
  """`stem.nii.gz`, or `stem.nii` if only that exists."""
  path = folder / f"{stem}.nii.gz"
  if not path.exists() and (folder / f"{stem}.nii").exists():
    return folder / f"{stem}.nii"
  return path


def find_frames(folder: os.PathLike[str] | str) -> list[Frame]:
  """Lists the ED and ES frames of the `patientNNN` folders in `folder`.

  Args:
    folder: a `training/` or `testing/` folder.

  Raises:
    FileNotFoundError: if `folder` has no patient folder.
    InvalidExampleError: naming the file, if an Info.cfg is missing or
      lacks ED or ES, or a frame or its `_gt` file is missing.
  """
  folder = pathlib.Path(folder)
  patients = sorted(
    p for p in folder.iterdir() if p.is_dir() and _PATIENT.fullmatch(p.name)
  )
  if not patients:
    raise FileNotFoundError(
      f"No patientNNN folders in {folder}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )
  frames = []
  for patient in patients:
    number = int(_PATIENT.fullmatch(patient.name).group(1))
    info = read_info(patient / "Info.cfg", case_id=patient.name)
    for phase in PHASES:
      case_id = f"{patient.name}_{phase}"
      stem = f"{patient.name}_frame{int(info[phase]):02d}"
      image = _nifti(patient, stem)
      label = _nifti(patient, f"{stem}_gt")
      if not image.exists():
        raise checks.InvalidExampleError(
          f"Invalid example {case_id!r} ({image}): no such file; Info.cfg "
          f"says the {phase} frame is {info[phase]}."
        )
      if not label.exists():
        raise checks.InvalidExampleError(
          f"Invalid example {case_id!r} ({label}): no ground-truth file for "
          f"the {phase} frame {image.name} (the 2017 challenge release had "
          "no testing labels; use the current release)."
        )
      frames.append(
        Frame(
          case=medical_builder.Case(
            case_id=case_id, images=(image,), label=label
          ),
          patient=number,
          phase=phase,
          group=info.get("Group", ""),
        )
      )
  return frames


def split_frames(root: os.PathLike[str] | str) -> dict[str, list[Frame]]:
  """The frames of each split, from the folder holding `training/`.

  Raises:
    InvalidExampleError: if a `training/` patient number is not 1-100.
  """
  root = pathlib.Path(root)
  splits: dict[str, list[Frame]] = {split: [] for split in SPLITS}
  for frame in find_frames(root / "training"):
    if frame.patient in TRAIN_PATIENTS:
      splits["train"].append(frame)
    elif frame.patient in VALIDATION_PATIENTS:
      splits["validation"].append(frame)
    else:
      raise checks.InvalidExampleError(
        f"Invalid example {frame.case.case_id!r} "
        f"({pathlib.Path(frame.case.images[0]).parent}): training patients "
        "are numbered 001-100."
      )
  splits["test"] = find_frames(root / "testing")
  return splits


class Acdc(medical_builder.MedicalBuilder):
  """ACDC cardiac cine MRI, ED and ES frames, 3-D, RV/myocardium/LV."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  SPEC = medical_builder.BuilderSpec(
    description=_DESCRIPTION,
    class_names=CLASS_NAMES,
    channel_names=CHANNEL_NAMES,
    spatial_dims=3,
    splits=SPLITS,
    needs_manual_dir=True,
    homepage=HOMEPAGE,
    citation=_CITATION,
    license=_LICENSE,
    extra_text=("group", "phase"),
    extra_metadata={"groups": GROUPS, "phases": PHASES},
  )
  BUILDER_CONFIGS = [
    AcdcConfig(name="native", description="Each case's own voxel grid."),
  ]
  DEFAULT_CONFIG_NAME = "native"

  @property
  def preprocessing(self) -> preprocessing.Preprocessing:
    spacing = self.builder_config.spacing
    return preprocessing.Preprocessing(
      canonical=True,
      spacing=tuple(spacing) if spacing is not None else None,
      normalization=("mri",),
    )

  def _cases_per_split(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, list[Frame]]:
    # TFDS checks that the manual dir exists and shows the instructions
    # when it does not.
    return split_frames(find_root(dl_manager.manual_dir))

  def _make_example(self, frame: Frame) -> tuple[str, dict[str, Any]]:
    example = self._read_case(frame.case)
    example["group"] = frame.group
    example["phase"] = frame.phase
    return frame.case.case_id, example
