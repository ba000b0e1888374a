"""TFDS builder for `promise12`: prostate segmentation in T2-weighted MRI.

PROMISE12 (Litjens et al. 2014, the MICCAI 2012 grand challenge): 50
training cases from four centres and several vendors, with and without an
endorectal coil, each a transversal T2-weighted MR volume with a reference
prostate segmentation, as MetaImage files:

  CaseNN.mhd + CaseNN.raw                            the image (NN = 00-49)
  CaseNN_segmentation.mhd + CaseNN_segmentation.raw  0 background, 1 prostate

The challenge's test cases have no public labels, so the 50 training cases
are split by number: 00-39 train, 40-44 validation, 45-49 test. Examples:

  image:  f32[X, Y, Z, 1]  z-scored inside the nonzero voxels, RAS+ axes
  label:  u8[X, Y, Z]

plus the shared features of the medical format (see `medical_builder`). The
native grid is kept (about 0.3-0.7 mm in-plane, 2.2-4 mm between slices).

  from medseg_jax.data import registry
  registry.prepare("promise12", data_dir, manual_dir="/data/promise12")
  train = registry.data_source("promise12", "train", data_dir)
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence

import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import medical_builder
from medseg_jax.data import preprocessing

CLASS_NAMES = ("background", "prostate")
CHANNEL_NAMES = ("T2",)
NUM_CASES = 50
SPLIT_CASES = {
  "train": range(0, 40),
  "validation": range(40, 45),
  "test": range(45, 50),
}

HOMEPAGE = "https://promise12.grand-challenge.org/"

_CITATION = """\
@article{litjens2014evaluation,
  title={Evaluation of prostate segmentation algorithms for MRI: The
         PROMISE12 challenge},
  author={Litjens, Geert and Toth, Robert and van de Ven, Wendy and
          Hoeks, Caroline and Kerkstra, Sjoerd and van Ginneken, Bram and
          Vincent, Graham and Guillard, Gwenael and Birbeck, Neil and
          Zhang, Jindang and others},
  journal={Medical Image Analysis},
  volume={18},
  number={2},
  pages={359--373},
  year={2014},
  doi={10.1016/j.media.2013.12.002}
}
"""

_LICENSE = (
  "Research use under the terms of the PROMISE12 challenge on "
  "grand-challenge.org (download needs a login; no open licence is "
  "stated, do not redistribute). Cite Litjens et al., Medical Image "
  "Analysis 18(2):359-373 (2014)."
)

MANUAL_DOWNLOAD_INSTRUCTIONS = (
  f"""\
PROMISE12 needs a grand-challenge.org login: sign in at {HOMEPAGE}, join
the challenge, and download the training data (TrainingData_Part1.zip,
TrainingData_Part2.zip, TrainingData_Part3.zip). Unzip them into one folder
and point `manual_dir` at it; the cases may sit directly in it or in
sub-folders at any depth:
  TrainingData_Part1/Case00.mhd  TrainingData_Part1/Case00.raw
  TrainingData_Part1/Case00_segmentation.mhd  ..._segmentation.raw
  ...  Case00 .. Case49
Folders whose name starts with "Test" or "LiveChallenge" (the unlabelled
challenge test cases, which reuse the names Case00, ...) are ignored.
Splits by case number: 00-39 train, 40-44 validation, 45-49 test.
Licence: """
  + _LICENSE
)

_DESCRIPTION = """\
PROMISE12 prostate MRI (Litjens et al. 2014): the 50 labelled training
cases of the MICCAI 2012 challenge, transversal T2-weighted volumes from
four centres (1.5 T and 3 T, with and without endorectal coil), with a
reference prostate segmentation (0 background, 1 prostate).

Preprocessing at build time: MetaImage (LPS+) to RAS+ world coordinates,
reorientation to RAS+ (axis permutations and flips only), per-volume
z-score over the nonzero voxels. Each case keeps its own grid; `affine`,
`original_affine` and `original_shape` place it.

Splits by case number: train Case00-39 (40), validation Case40-44 (5),
test Case45-49 (5).
"""

_IMAGE = re.compile(r"Case(\d{2})\.(mhd|mha)", re.IGNORECASE)
_LABEL = re.compile(r"Case(\d{2})_segmentation\.(mhd|mha)", re.IGNORECASE)
_IGNORED_FOLDERS = re.compile(r"(test|livechallenge)", re.IGNORECASE)


def _index(
  files: Sequence[pathlib.Path], pattern: re.Pattern[str]
) -> dict[int, pathlib.Path]:
  found: dict[int, pathlib.Path] = {}
  for file in files:
    match = pattern.fullmatch(file.name)
    if match is None:
      continue
    number = int(match.group(1))
    if number in found:
      raise checks.InvalidExampleError(
        f"Invalid example 'Case{number:02d}' ({found[number]}, {file}): two "
        "files for one case; keep one copy of the training data."
      )
    found[number] = file
  return found


def find_cases(root: os.PathLike[str] | str) -> list[medical_builder.Case]:
  """Finds the `CaseNN.mhd` images under `root` and their segmentations.

  Folders named like the challenge's unlabelled test sets (`Test*`,
  `LiveChallenge*`) are skipped.

  Raises:
    FileNotFoundError: if there is no case under `root`.
    InvalidExampleError: naming the file, for a case without its
      segmentation (or a segmentation without its image), two copies of one
      case, or a case number outside 00-49.
  """
  root = pathlib.Path(root)
  files = sorted(
    p
    for p in root.rglob("*")
    if p.is_file()
    and not any(
      _IGNORED_FOLDERS.match(part) for part in p.relative_to(root).parts[:-1]
    )
  )
  images = _index(files, _IMAGE)
  labels = _index(files, _LABEL)
  if not images and not labels:
    raise FileNotFoundError(
      f"No PROMISE12 CaseNN.mhd files under {root}.\n"
      f"{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )
  cases = []
  for number in sorted(set(images) | set(labels)):
    case_id = f"Case{number:02d}"
    if number not in images:
      raise checks.InvalidExampleError(
        f"Invalid example {case_id!r} ({labels[number]}): a segmentation "
        f"without its image {case_id}.mhd."
      )
    image = images[number]
    if number >= NUM_CASES:
      raise checks.InvalidExampleError(
        f"Invalid example {case_id!r} ({image}): PROMISE12 training cases "
        f"are numbered 00-{NUM_CASES - 1}."
      )
    if number not in labels:
      raise checks.InvalidExampleError(
        f"Invalid example {case_id!r} ({image}): no segmentation file "
        f"{image.parent / (case_id + '_segmentation' + image.suffix)}."
      )
    cases.append(
      medical_builder.Case(
        case_id=case_id,
        images=(image,),
        label=labels[number],
        kind="metaimage",
      )
    )
  return cases


def _case_number(case: medical_builder.Case) -> int:
  return int(case.case_id[len("Case") :])


class Promise12(medical_builder.MedicalBuilder):
  """PROMISE12 prostate T2-weighted MRI, 3-D, background/prostate."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  SPEC = medical_builder.BuilderSpec(
    description=_DESCRIPTION,
    class_names=CLASS_NAMES,
    channel_names=CHANNEL_NAMES,
    spatial_dims=3,
    splits=tuple(SPLIT_CASES),
    needs_manual_dir=True,
    homepage=HOMEPAGE,
    citation=_CITATION,
    license=_LICENSE,
  )
  PREPROCESSING = preprocessing.Preprocessing(
    canonical=True, normalization=("mri",)
  )

  def _cases_per_split(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, list[medical_builder.Case]]:
    # TFDS checks that the manual dir exists and shows the instructions
    # when it does not.
    cases = find_cases(dl_manager.manual_dir)
    return {
      split: [c for c in cases if _case_number(c) in numbers]
      for split, numbers in SPLIT_CASES.items()
    }
