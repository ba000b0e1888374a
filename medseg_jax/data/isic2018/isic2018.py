"""TFDS builder for `isic2018`: ISIC 2018 Task 1, skin lesion boundaries.

Dermoscopic RGB photographs with a binary lesion mask each (Codella et al.
2019; images from the HAM10000 collection, Tschandl et al. 2018): 2594
training, 100 validation and 1000 test images, the official splits. Stored as
`image` f32[H, W, 3] in [0, 1] and `label` u8[H, W] (1 = lesion).

Two configs:
  isic2018/native  the source size (often several thousand pixels a side;
                   large: a 6000 x 4000 image is 288 MB as f32).
  isic2018/512     downscaled so that the long side is at most 512 pixels.

  from medseg_jax.data import registry
  registry.prepare("isic2018/512", data_dir)
  train = registry.data_source("isic2018/512", "train", data_dir)

Without `manual_dir` the six challenge zips (about 11 GB) are downloaded from
the ISIC archive's public S3 bucket.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any

import scipy.ndimage
import tensorflow_datasets as tfds
from PIL import Image

from medseg_jax.data import medical_builder
from medseg_jax.data import medical_io
from medseg_jax.data import preprocessing

CLASS_NAMES = ("background", "lesion")
CHANNEL_NAMES = ("R", "G", "B")
SPLITS = ("train", "validation", "test")
BASE_URL = "https://isic-challenge-data.s3.amazonaws.com/2018/"
# Split -> (image folder, mask folder); each is also the name of its zip.
FOLDERS = {
  "train": (
    "ISIC2018_Task1-2_Training_Input",
    "ISIC2018_Task1_Training_GroundTruth",
  ),
  "validation": (
    "ISIC2018_Task1-2_Validation_Input",
    "ISIC2018_Task1_Validation_GroundTruth",
  ),
  "test": (
    "ISIC2018_Task1-2_Test_Input",
    "ISIC2018_Task1_Test_GroundTruth",
  ),
}
URLS = {
  folder: f"{BASE_URL}{folder}.zip"
  for pair in FOLDERS.values()
  for folder in pair
}
_IMAGE_NAME = re.compile(r"ISIC_\d+\.jpg")
_MASK_SUFFIX = "_segmentation.png"
_LABEL_MAP = {0: 0, 255: 1}

_CITATION = """\
@article{codella2019skin,
  title={Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge
         Hosted by the International Skin Imaging Collaboration (ISIC)},
  author={Codella, Noel and Rotemberg, Veronica and Tschandl, Philipp and
          Celebi, M. Emre and Dusza, Stephen and Gutman, David and
          Helba, Brian and Kalloo, Aadi and Liopyris, Konstantinos and
          Marchetti, Michael and Kittler, Harald and Halpern, Allan},
  journal={arXiv preprint arXiv:1902.03368},
  year={2019}
}
@article{tschandl2018ham10000,
  title={The {HAM10000} dataset, a large collection of multi-source
         dermatoscopic images of common pigmented skin lesions},
  author={Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  journal={Scientific Data},
  volume={5},
  pages={180161},
  year={2018},
  doi={10.1038/sdata.2018.161}
}
"""

_LICENSE = (
  "Creative Commons Attribution-NonCommercial 4.0 International "
  "(CC BY-NC 4.0). Cite Codella et al. 2019 (arXiv:1902.03368) and "
  "Tschandl et al., Sci. Data 5:180161 (2018)."
)

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Optional (the data downloads by itself). To build from a local copy, point
`manual_dir` at a folder holding, for each split, either the challenge zip or
its extracted folder (at most one level down):
  {FOLDERS["train"][0]}/ISIC_0000000.jpg ...
  {FOLDERS["train"][1]}/ISIC_0000000{_MASK_SUFFIX} ...
  {FOLDERS["validation"][0]}/  {FOLDERS["validation"][1]}/
  {FOLDERS["test"][0]}/  {FOLDERS["test"][1]}/
The zips are at {BASE_URL}<folder>.zip. Masks are PNGs with 0 (background)
and 255 (lesion). Licence: {_LICENSE}
"""

_DESCRIPTION = """\
ISIC 2018 Task 1, lesion boundary segmentation (Codella et al. 2019):
dermoscopic photographs of pigmented skin lesions (from HAM10000, Tschandl
et al. 2018), each with one binary lesion mask. Official splits: train 2594,
validation 100, test 1000 images. `case_id` is the image name (e.g.
"ISIC_0000000").

Images are stored as f32[H, W, 3] RGB in [0, 1] (8-bit values / 255); no
other normalisation. Classes: 0 background, 1 lesion (mask value 255).

Geometry: these are photographs without a physical calibration, so
distances are in pixel units of the source image: `original_affine` is the
identity and `original_shape` the source size. Config `native` stores the
source grid (`spacing` (1, 1), identity `affine`). Config `512` downscales
every image whose long side exceeds 512 pixels so that it becomes 512 (the
short side rounded), image by bilinear interpolation after a Gaussian
anti-aliasing filter (sigma = (s - 1) / 2 for a reduction by s), mask by
nearest neighbour; `spacing` is then (s, s) source pixels per stored pixel
and `affine` maps stored pixels onto the source grid, so
`preprocessing.to_original_grid` puts a prediction back at full size.
"""


@dataclasses.dataclass
class Isic2018Config(tfds.core.BuilderConfig):
  """A stored size.

  Attributes:
    max_side: long side, in pixels, that larger images are reduced to; None
      keeps the source size.
  """

  max_side: int | None = None


def _anti_alias(sigma: float):
  """An `image_transform`: RGB to [0, 1], then a Gaussian blur per channel."""

  def transform(volume: medical_io.Volume) -> medical_io.Volume:
    volume = medical_builder.to_unit_rgb(volume)
    blurred = scipy.ndimage.gaussian_filter(
      volume.data, sigma=(sigma, sigma, 0), mode="nearest"
    )
    return dataclasses.replace(volume, data=blurred)

  return transform


def reduction(path: os.PathLike[str] | str, max_side: int | None) -> float:
  """Source pixels per stored pixel for an image (1 if already small).

  Reads only the image header. An unreadable header gives 1, so that the
  full read in `make_example` reports the problem.
  """
  if max_side is None:
    return 1.0
  try:
    with Image.open(path) as img:
      width, height = img.size
  except Exception:  # noqa: BLE001 - reported by the full read later.
    return 1.0
  return max(max(width, height) / max_side, 1.0)


def _locate(root: pathlib.Path, folder: str) -> pathlib.Path | None:
  for candidate in (
    root / folder,
    root,
    *(p / folder for p in sorted(root.iterdir()) if p.is_dir()),
  ):
    if candidate.name == folder and candidate.is_dir():
      return candidate
  return None


def find_cases(
  image_dir: os.PathLike[str] | str, mask_dir: os.PathLike[str] | str
) -> list[medical_builder.Case]:
  """Pairs `ISIC_*.jpg` in `image_dir` with masks in `mask_dir`, by name.

  A missing mask gives `label=None`, which `make_example` reports. Other
  files (LICENSE.txt, ATTRIBUTION.txt) are ignored.

  Raises:
    FileNotFoundError: if `image_dir` holds no image.
  """
  image_dir, mask_dir = pathlib.Path(image_dir), pathlib.Path(mask_dir)
  images = sorted(
    p for p in image_dir.iterdir() if _IMAGE_NAME.fullmatch(p.name)
  )
  if not images:
    raise FileNotFoundError(
      f"No ISIC_*.jpg images in {image_dir}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )
  cases = []
  for image in images:
    mask = mask_dir / f"{image.stem}{_MASK_SUFFIX}"
    cases.append(
      medical_builder.Case(
        case_id=image.stem,
        images=(image,),
        label=mask if mask.is_file() else None,
      )
    )
  return cases


class Isic2018(medical_builder.MedicalBuilder):
  """ISIC 2018 Task 1 lesion segmentation, 2-D RGB."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  SPEC = medical_builder.BuilderSpec(
    description=_DESCRIPTION,
    class_names=CLASS_NAMES,
    channel_names=CHANNEL_NAMES,
    spatial_dims=2,
    splits=SPLITS,
    homepage="https://challenge.isic-archive.com/data/#2018",
    citation=_CITATION,
    license=_LICENSE,
  )
  BUILDER_CONFIGS = [
    Isic2018Config(
      name="native",
      description="Source size (often thousands of pixels a side).",
      max_side=None,
    ),
    Isic2018Config(
      name="512",
      description="Long side reduced to 512 pixels (smaller images kept).",
      max_side=512,
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "512"

  def _cases_per_split(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, list[medical_builder.Case]]:
    folders = _local_copy(dl_manager)
    if folders is None:
      folders = _download(dl_manager)
    return {
      split: find_cases(folders[image_folder], folders[mask_folder])
      for split, (image_folder, mask_folder) in FOLDERS.items()
    }

  def _make_example(
    self, case: medical_builder.Case
  ) -> tuple[str, dict[str, Any]]:
    scale = reduction(case.images[0], self.builder_config.max_side)
    if scale > 1.0:
      preprocess = preprocessing.Preprocessing(
        canonical=False,
        spacing=(scale, scale),
        image_order=1,
        normalization=("none",),
      )
      transform = _anti_alias((scale - 1.0) / 2.0)
    else:
      preprocess = preprocessing.Preprocessing(
        canonical=False, normalization=("none",)
      )
      transform = medical_builder.to_unit_rgb
    return case.case_id, self._read_case(
      case,
      preprocess=preprocess,
      label_map=_LABEL_MAP,
      image_transform=transform,
    )


def _download(
  dl_manager: tfds.download.DownloadManager,
) -> dict[str, pathlib.Path]:
  """Every split's folder, from the challenge zips (downloaded).

  Raises:
    FileNotFoundError: if a zip does not extract to its folder.
  """
  extracted = dl_manager.download_and_extract(URLS)
  folders = {}
  for name, path in extracted.items():
    found = _locate(pathlib.Path(path), name)
    if found is None:
      raise FileNotFoundError(
        f"The archive {URLS[name]} did not extract to a folder {name} "
        f"(looked in {path})."
      )
    folders[name] = found
  return folders


def _local_copy(
  dl_manager: tfds.download.DownloadManager,
) -> dict[str, pathlib.Path] | None:
  """Every split's folder from the manual dir (extracting zips), or None.

  None when there is no manual dir or it holds none of the folders and
  zips; a manual dir holding only some of them is an error.

  Raises:
    FileNotFoundError: naming the folders that are missing.
  """
  manual = medical_builder.manual_dir_or_none(dl_manager)
  if manual is None:
    return None
  found = {}
  for name in URLS:
    folder = _locate(manual, name)
    if folder is None and (manual / f"{name}.zip").is_file():
      folder = _locate(
        pathlib.Path(dl_manager.extract(manual / f"{name}.zip")), name
      )
    if folder is not None:
      found[name] = folder
  if not found:
    return None
  missing = [name for name in URLS if name not in found]
  if missing:
    raise FileNotFoundError(
      f"{manual} holds only part of ISIC 2018 Task 1: no folder or zip for "
      f"{', '.join(missing)}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )
  return found
