"""TFDS builder for `drive`: retinal fundus photographs with vessel masks.

DRIVE (Staal et al., IEEE TMI 2004): 40 colour fundus photographs (565 x 584
pixels) from a Dutch diabetic-retinopathy screening programme, 20 training
and 20 test, each with a manual vessel segmentation and a field-of-view
(FOV) mask. Stored as `image` f32[584, 565, 3] in [0, 1], `label`
u8[584, 565] (1 = vessel) and `fov` u8[584, 565] (1 = inside the FOV, where
the usual DRIVE metrics are computed).

The data needs a login (see `MANUAL_DOWNLOAD_INSTRUCTIONS`), then:

  from medseg_jax.data import registry
  registry.prepare("drive", data_dir, manual_dir="/data/drive")
  train = registry.data_source("drive", "train", data_dir)
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any
from typing import NoReturn

import numpy as np
import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import medical_builder
from medseg_jax.data import medical_io
from medseg_jax.data import preprocessing

CLASS_NAMES = ("background", "vessel")
CHANNEL_NAMES = ("R", "G", "B")
EXTRA_MASKS = ("fov",)
SPLITS = ("train", "validation", "test")
# Image numbers per split: the official training images 21-40 minus a
# fixed validation subset, and the official test images 01-20.
SPLIT_NUMBERS = {
  "train": range(21, 37),
  "validation": range(37, 41),
  "test": range(1, 21),
}
# Folder of the official set each split comes from.
_SET = {"train": "training", "validation": "training", "test": "test"}
_RAW_VESSEL = 255

_CITATION = """\
@article{staal2004ridge,
  title={Ridge-Based Vessel Segmentation in Color Images of the Retina},
  author={Staal, Joes and Abr{\\`a}moff, Michael D. and Niemeijer, Meindert
          and Viergever, Max A. and van Ginneken, Bram},
  journal={IEEE Transactions on Medical Imaging},
  volume={23},
  number={4},
  pages={501--509},
  year={2004},
  doi={10.1109/TMI.2004.825627}
}
"""

_LICENSE = (
  "Available for research after registration at "
  "https://drive.grand-challenge.org; no licence for redistribution is "
  "given. Cite Staal et al., IEEE TMI 23(4):501-509 (2004)."
)

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
DRIVE needs a (free) login: register at https://drive.grand-challenge.org,
download the data, and point `manual_dir` at the folder holding `DRIVE/`
(or at `DRIVE/` itself), laid out as in the release:
  DRIVE/training/images/21_training.tif ... 40_training.tif
  DRIVE/training/1st_manual/21_manual1.gif ... 40_manual1.gif
  DRIVE/training/mask/21_training_mask.gif ... 40_training_mask.gif
  DRIVE/test/images/01_test.tif ... 20_test.tif
  DRIVE/test/1st_manual/01_manual1.gif ... 20_manual1.gif
  DRIVE/test/mask/01_test_mask.gif ... 20_test_mask.gif
The test split needs the first observer's test annotations
(`test/1st_manual`), which came with the original release; every image
needs its manual segmentation and FOV mask. Licence: {_LICENSE}
"""

_DESCRIPTION = """\
DRIVE, Digital Retinal Images for Vessel Extraction (Staal et al. 2004):
colour fundus photographs (Canon CR5 non-mydriatic 3CCD camera, 45 degree
field of view, 565 x 584 pixels) with manual vessel segmentations by the
first observer and field-of-view masks.

Features: `image` f32[H, W, 3] RGB in [0, 1] (8-bit values / 255, no other
normalisation); `label` u8[H, W] with 0 background, 1 vessel (255 in the
GIF); `fov` u8[H, W] with 1 inside the camera's field of view, where DRIVE
results are usually evaluated. `case_id` is the image name, e.g.
"21_training" or "01_test".

Geometry: photographs without a physical calibration, so `spacing` is
(1, 1) in pixel units and `affine` and `original_affine` are the identity.

Splits: train = training images 21-36, validation = training images 37-40
(a fixed subset), test = the official test images 01-20.
"""


@dataclasses.dataclass(frozen=True)
class DriveCase:
  """The three files of one DRIVE image.

  Attributes:
    case_id: the image name without suffix, e.g. "21_training".
    number: the image number (1-40).
    image: the RGB TIFF.
    label: the first observer's manual vessel GIF (may not exist).
    fov: the field-of-view mask GIF (may not exist).
  """

  case_id: str
  number: int
  image: pathlib.Path
  label: pathlib.Path
  fov: pathlib.Path


def find_release(root: os.PathLike[str] | str) -> pathlib.Path | None:
  """The `DRIVE` folder (holding `training/` and `test/`) under `root`."""
  root = pathlib.Path(root)
  for candidate in (root / "DRIVE", root):
    if (candidate / "training" / "images").is_dir():
      return candidate
  return None


def find_cases(root: os.PathLike[str] | str) -> list[DriveCase]:
  """Lists every image of the release with its manual and FOV files.

  Raises:
    FileNotFoundError: if there is no release under `root`, or it has no
      test images or no test annotations.
  """
  release = find_release(root)
  if release is None:
    raise FileNotFoundError(
      f"No DRIVE release found under {root}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )
  cases = []
  for name in ("training", "test"):
    folder = release / name
    images = (
      sorted((folder / "images").glob(f"*_{name}.tif"))
      if (folder / "images").is_dir()
      else []
    )
    if not images:
      raise FileNotFoundError(
        f"No DRIVE {name} images (*_{name}.tif) in {folder / 'images'}.\n"
        f"{MANUAL_DOWNLOAD_INSTRUCTIONS}"
      )
    if not (folder / "1st_manual").is_dir():
      raise FileNotFoundError(
        f"No {folder / '1st_manual'} folder: the {name} images need the "
        "first observer's manual segmentations.\n"
        f"{MANUAL_DOWNLOAD_INSTRUCTIONS}"
      )
    for image in images:
      match = re.fullmatch(rf"(\d+)_{name}", image.stem)
      if match is None:
        continue
      number = match.group(1)
      cases.append(
        DriveCase(
          case_id=image.stem,
          number=int(number),
          image=image,
          label=folder / "1st_manual" / f"{number}_manual1.gif",
          fov=folder / "mask" / f"{number}_{name}_mask.gif",
        )
      )
  return cases


def _read_gif(path: pathlib.Path, case_id: str) -> medical_io.Volume:
  """Reads a binary GIF (0/255) as an identity-placed `u8[H, W]` Volume.

  GIFs are palette images: Pillow returns palette indices unless they are
  converted, so the grey values are taken through mode "L".
  `medical_io.read` does not read GIFs (see `make_example`).
  """
  if not path.is_file():
    raise checks.InvalidExampleError(
      f"Invalid example {case_id!r} ({path}): missing file."
    )
  pixels = checks.read_image(path, case_id=case_id, mode="L")
  return medical_io.Volume(pixels, np.eye(4), os.fspath(path), 2)


def make_example(
  case: DriveCase, preprocess: preprocessing.Preprocessing
) -> dict[str, Any]:
  """Reads, checks and stores one DRIVE case (image, vessels, FOV).

  Like `medical_builder.make_example`, which cannot be used directly
  because `medical_io.read` does not dispatch `.gif` files.

  Raises:
    InvalidExampleError: naming the case and file, for a missing or corrupt
      file, an image that is not 8-bit RGB, masks whose size differs from
      the image's, or vessel mask values other than 0 and 255 (the FOV
      mask is inside where nonzero).
  """
  case_id = case.case_id

  def fail(path: os.PathLike[str] | str, problem: str) -> NoReturn:
    raise checks.InvalidExampleError(
      f"Invalid example {case_id!r} ({os.fspath(path)}): {problem}"
    )

  image = medical_io.read(case.image, case_id=case_id)
  if (
    image.data.dtype != np.uint8
    or image.data.ndim != 3
    or image.data.shape[-1] != 3
  ):
    fail(
      case.image,
      f"expected an 8-bit RGB image; got dtype {image.data.dtype} and shape "
      f"{image.data.shape}.",
    )
  image = dataclasses.replace(image, data=image.data.astype(np.float32) / 255.0)
  label = _read_gif(case.label, case_id)
  values = np.unique(label.data)
  unexpected = values[(values != 0) & (values != _RAW_VESSEL)]
  if unexpected.size:
    fail(
      case.label,
      f"vessel mask values must be 0 and {_RAW_VESSEL}; found "
      f"{unexpected[:10].tolist()}.",
    )
  label = dataclasses.replace(
    label, data=(label.data == _RAW_VESSEL).astype(np.uint8)
  )
  fov = _read_gif(case.fov, case_id)
  fov = dataclasses.replace(fov, data=(fov.data > 0).astype(np.uint8))
  preprocessing.check_same_grid([image, label, fov], case_id=case_id)
  stored, label = preprocess.apply([image], label, case_id=case_id)
  # Geometry only (the image grid is unchanged, as for the label).
  _, fov = dataclasses.replace(preprocess, normalization=("none",)).apply(
    [image], fov, case_id=case_id
  )
  checks.check_example(
    stored.data,
    label.data,
    num_classes=len(CLASS_NAMES),
    case_id=case_id,
    path=(case.image, case.label, case.fov),
    spatial_dims=2,
  )
  return {
    "image": stored.data.astype(np.float32),
    "label": label.data.astype(np.uint8),
    "fov": fov.data.astype(np.uint8),
    "spacing": stored.spacing.astype(np.float32),
    "affine": stored.affine.astype(np.float64),
    "original_affine": image.affine.astype(np.float64),
    "original_shape": np.asarray(image.shape, np.int32),
    "case_id": case_id,
    "modality": "+".join(CHANNEL_NAMES),
  }


class Drive(medical_builder.MedicalBuilder):
  """DRIVE retinal vessel segmentation, 2-D RGB with FOV masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  SPEC = medical_builder.BuilderSpec(
    description=_DESCRIPTION,
    class_names=CLASS_NAMES,
    channel_names=CHANNEL_NAMES,
    spatial_dims=2,
    splits=SPLITS,
    needs_manual_dir=True,
    homepage="https://drive.grand-challenge.org",
    citation=_CITATION,
    license=_LICENSE,
    extra_masks=EXTRA_MASKS,
  )
  PREPROCESSING = preprocessing.Preprocessing(
    canonical=False, normalization=("none",)
  )

  def _cases_per_split(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, list[DriveCase]]:
    cases = find_cases(dl_manager.manual_dir)
    return {
      split: [
        c
        for c in cases
        if c.number in SPLIT_NUMBERS[split] and c.case_id.endswith(_SET[split])
      ]
      for split in SPLITS
    }

  def _make_example(self, case: DriveCase) -> tuple[str, dict[str, Any]]:
    return case.case_id, make_example(case, self.PREPROCESSING)
