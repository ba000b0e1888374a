"""TFDS builder for `lesjak_ms`: 3-D MRI of MS patients with lesion masks.

Lesjak et al. (2017): 30 patients, FLAIR, T1, contrast-enhanced T1 and T2,
co-registered, with a 3-rater consensus white-matter lesion mask. Stored as
`f32[D, H, W, 4]` (channels FLAIR, T1, T1POST, T2, each z-scored inside the
brain), cropped to the brain's bounding box, RAS+ orientation.

  from medseg_jax.data import registry
  registry.prepare("lesjak_ms", data_dir, manual_dir="/data/open_ms_data")
  train = registry.data_source("lesjak_ms", "train", data_dir)

Without `manual_dir`, the MNI-space files of all 30 patients are downloaded
from the GitHub mirror github.com/muschellij2/open_ms_data (about 1 GB).
"""

from __future__ import annotations

import os
import pathlib
import re

import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import medical_builder
from medseg_jax.data import preprocessing

CLASS_NAMES = ("background", "lesion")
CHANNEL_NAMES = ("FLAIR", "T1", "T1POST", "T2")
NUM_PATIENTS = 30
# Fixed split by patient number: 1-20 train, 21-30 validation. (The 3-case
# subset in ../shared has patients 07 and 19 in train and 26 in validation.)
SPLITS = {"train": range(1, 21), "validation": range(21, 31)}

# File-name patterns per channel, for both layouts this builder reads:
#   MNI derivatives (open_ms_data):  FLAIR_N4_..._regtoMNI.nii.gz, T1_...,
#     T1POST_..., T2_..., GOLD_STANDARD_...
#   LIT release:  patientXX_FLAIR.nii.gz, patientXX_T1W.nii.gz,
#     patientXX_T1WKS.nii.gz, patientXX_T2W.nii.gz, patientXX_consensus_gt...
_PATTERNS = {
  "FLAIR": r"(^|_)FLAIR[_.]",
  "T1": r"(^|_)T1W?[_.]",
  "T1POST": r"(^|_)(T1POST|T1WKS)[_.]",
  "T2": r"(^|_)T2W?[_.]",
  "label": r"(^GOLD_STANDARD|consensus_gt)",
}
_NIFTI = (".nii.gz", ".nii")

_GITHUB = (
  "https://raw.githubusercontent.com/muschellij2/open_ms_data/"
  "65704901f60650824565aa5a4818611aa89716f4/cross_sectional/MNI"
)
_MNI_FILES = {
  "FLAIR": "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
  "T1": "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
  "T1POST": (
    "T1POST_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
  ),
  "T2": "T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
  "label": "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz",
}

_CITATION = """\
@article{lesjak2018novel,
  title={A Novel Public MR Image Dataset of Multiple Sclerosis Patients With
         Lesion Segmentations Based on Multi-rater Consensus},
  author={Lesjak, {\\v{Z}}iga and Galimzianova, Alfiia and Koren, Ale{\\v{s}}
          and Lukin, Matej and Pernu{\\v{s}}, Franjo and Likar, Bo{\\v{s}}tjan
          and {\\v{S}}piclin, {\\v{Z}}iga},
  journal={Neuroinformatics},
  volume={16},
  number={1},
  pages={51--63},
  year={2018},
  doi={10.1007/s12021-017-9348-7}
}
"""

_LICENSE = (
  "Creative Commons Attribution (CC-BY). Cite Lesjak et al., "
  "Neuroinformatics 16:51-63 (2018) in any published work."
)

MANUAL_DOWNLOAD_INSTRUCTIONS = (
  """\
Point `manual_dir` at a folder holding one sub-folder per patient, named
`patientXX` (XX = 01..30), at any depth (e.g. the `cross_sectional/MNI`
folder of github.com/muschellij2/open_ms_data, or the LIT release from
http://lit.fe.uni-lj.si/tools). Each patient folder needs a FLAIR, T1,
contrast-enhanced T1 and T2 NIfTI and the consensus lesion mask, named as in
either source:
  FLAIR_*.nii.gz  T1_*.nii.gz  T1POST_*.nii.gz  T2_*.nii.gz  GOLD_STANDARD_*
  patientXX_FLAIR.nii.gz  patientXX_T1W  patientXX_T1WKS  patientXX_T2W
  patientXX_consensus_gt.nii.gz
Any subset of patients may be present; each goes to its split by number
(1-20 train, 21-30 validation). Licence: """
  + _LICENSE
)

_DESCRIPTION = f"""\
3-D MR images of 30 multiple sclerosis patients (Lesjak et al. 2017) with
white-matter lesion masks from a 3-rater consensus. Four co-registered
modalities are stacked as channels: {", ".join(CHANNEL_NAMES)}.

Preprocessing at build time: reorientation to RAS+, crop to the brain's
bounding box (2-voxel margin), per-channel z-score inside the brain (voxels
outside set to 0). The grid is the source's (1 mm isotropic for the MNI
derivatives); `affine`, `original_affine` and `original_shape` place it.

Classes: 0 background, 1 lesion. Splits by patient number: train 1-20,
validation 21-30.
"""


def _channel_of(name: str) -> str | None:
  for channel in ("label", "T1POST", "FLAIR", "T2", "T1"):
    if re.search(_PATTERNS[channel], name):
      return channel
  return None


def find_cases(root: os.PathLike[str] | str) -> list[medical_builder.Case]:
  """Finds `patientXX` folders under `root` and their files.

  Raises:
    FileNotFoundError: if there is no patient folder under `root`.
    InvalidExampleError: if a patient folder lacks a modality or the label,
      or has two candidate files for one.
  """
  root = pathlib.Path(root)
  folders = sorted(
    p
    for p in root.rglob("patient*")
    if p.is_dir() and re.fullmatch(r"patient\d+", p.name)
  )
  if not folders:
    raise FileNotFoundError(
      f"No Lesjak MS patient folders under {root}.\n"
      f"{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )
  cases = []
  for folder in folders:
    found: dict[str, pathlib.Path] = {}
    for file in sorted(folder.iterdir()):
      if not file.name.endswith(_NIFTI):
        continue
      channel = _channel_of(file.name)
      if channel is None:
        continue
      if channel in found:
        raise checks.InvalidExampleError(
          f"Invalid example {folder.name!r} ({folder}): two files for "
          f"{channel}: {found[channel].name} and {file.name}."
        )
      found[channel] = file
    missing = [c for c in CHANNEL_NAMES if c not in found]
    if missing:
      raise checks.InvalidExampleError(
        f"Invalid example {folder.name!r} ({folder}): no "
        f"{', '.join(missing)} image; expected {', '.join(CHANNEL_NAMES)} "
        "and a lesion mask."
      )
    cases.append(
      medical_builder.Case(
        case_id=folder.name,
        images=tuple(found[c] for c in CHANNEL_NAMES),
        label=found.get("label"),
      )
    )
  return cases


def _patient_number(case: medical_builder.Case) -> int:
  return int(re.sub(r"\D", "", case.case_id))


class LesjakMs(medical_builder.MedicalBuilder):
  """Lesjak et al. 2017 MS lesions, 3-D, 4 MRI channels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  SPEC = medical_builder.BuilderSpec(
    description=_DESCRIPTION,
    class_names=CLASS_NAMES,
    channel_names=CHANNEL_NAMES,
    spatial_dims=3,
    splits=tuple(SPLITS),
    homepage="http://lit.fe.uni-lj.si/tools",
    citation=_CITATION,
    license=_LICENSE,
  )
  PREPROCESSING = preprocessing.Preprocessing(
    canonical=True,
    normalization=("mri",),
    crop_foreground=True,
    crop_margin=2,
  )

  def _cases_per_split(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, list[medical_builder.Case]]:
    manual = medical_builder.manual_dir_or_none(dl_manager)
    if manual is not None:
      cases = find_cases(manual)
    else:
      cases = _download(dl_manager)
    return {
      split: [c for c in cases if _patient_number(c) in numbers]
      for split, numbers in SPLITS.items()
    }


def _download(
  dl_manager: tfds.download.DownloadManager,
) -> list[medical_builder.Case]:
  """Downloads the MNI derivatives of all patients from GitHub."""
  urls = {
    f"patient{n:02d}/{channel}": f"{_GITHUB}/patient{n:02d}/{name}"
    for n in range(1, NUM_PATIENTS + 1)
    for channel, name in _MNI_FILES.items()
  }
  paths = dl_manager.download(urls)
  cases = []
  for n in range(1, NUM_PATIENTS + 1):
    key = f"patient{n:02d}"
    cases.append(
      medical_builder.Case(
        case_id=key,
        images=tuple(paths[f"{key}/{c}"] for c in CHANNEL_NAMES),
        label=paths[f"{key}/label"],
        kind="nifti",
      )
    )
  return cases
