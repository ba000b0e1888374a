"""TFDS builder for `kvasir_seg`: colonoscopy frames with polyp masks.

Kvasir-SEG (Jha et al., MMM 2020): 1000 RGB frames from colonoscopies at
Vestre Viken Health Trust (Norway), each with a hand-drawn polyp mask, at
their native sizes (332 x 487 up to 1920 x 1072 pixels). Stored as
`image` f32[H, W, 3] in [0, 1] and `label` u8[H, W] (1 = polyp).

  from medseg_jax.data import registry
  registry.prepare("kvasir_seg", data_dir)
  train = registry.data_source("kvasir_seg", "train", data_dir)

Without `manual_dir` the release zip (about 46 MB) is downloaded from
datasets.simula.no.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from medseg_jax.data import medical_builder
from medseg_jax.data import preprocessing

CLASS_NAMES = ("background", "polyp")
CHANNEL_NAMES = ("R", "G", "B")
URL = "https://datasets.simula.no/downloads/kvasir-seg.zip"
ARCHIVE_NAME = "kvasir-seg.zip"
RELEASE_FOLDER = "Kvasir-SEG"
# Share of the cases (in sorted-name order) in validation and in test; the
# rest, first in that order, is train: 800/100/100 for the 1000 cases.
HELD_OUT_SHARE = 0.1
SPLITS = ("train", "validation", "test")
# The masks are JPEGs, so edges carry compression noise: >= 128 is polyp.
MASK_THRESHOLD = 128
_LABEL_MAP = {v: int(v >= MASK_THRESHOLD) for v in range(256)}

_CITATION = """\
@inproceedings{jha2020kvasir,
  title={Kvasir-SEG: A Segmented Polyp Dataset},
  author={Jha, Debesh and Smedsrud, Pia H. and Riegler, Michael A. and
          Halvorsen, P{\\aa}l and de Lange, Thomas and Johansen, Dag and
          Johansen, H{\\aa}vard D.},
  booktitle={MultiMedia Modeling (MMM 2020)},
  series={Lecture Notes in Computer Science},
  volume={11962},
  pages={451--462},
  year={2020},
  publisher={Springer},
  doi={10.1007/978-3-030-37734-2_37}
}
"""

_LICENSE = (
  "Free for research and educational use only; any other use, including "
  "commercial use, needs the owners' written permission. Cite Jha et al., "
  "MMM 2020 (LNCS 11962:451-462) in any work that uses the data."
)

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Optional (the data downloads by itself). To build from a local copy, point
`manual_dir` at a folder holding either the release zip `{ARCHIVE_NAME}`
(from {URL}) or its extracted folder:
  <manual_dir>/{RELEASE_FOLDER}/images/<name>.jpg
  <manual_dir>/{RELEASE_FOLDER}/masks/<name>.jpg   (same names)
(`manual_dir` may also be the `{RELEASE_FOLDER}` folder itself.)
Licence: {_LICENSE}
"""

_DESCRIPTION = f"""\
Kvasir-SEG (Jha et al. 2020): 1000 colonoscopy frames showing polyps, with
polyp masks drawn by a physician and checked by an experienced
gastroenterologist. Images are stored at their native size (332 x 487 to
1920 x 1072 pixels) as f32[H, W, 3] RGB in [0, 1] (8-bit values / 255); no
other normalisation.

Classes: 0 background, 1 polyp. The masks are JPEG files, so they are
thresholded at {MASK_THRESHOLD} (values >= {MASK_THRESHOLD} are polyp).

Geometry: these are endoscopic photographs without a physical calibration,
so `spacing` is (1, 1) in pixel units and `affine` and `original_affine`
are the identity.

Splits, fixed by sorted file name (the names are random strings): the first
80% train, the next 10% validation, the last 10% test (800/100/100).
`case_id` is the file name without `.jpg`.
"""


def find_release(root: os.PathLike[str] | str) -> pathlib.Path | None:
  """The folder holding `images/` and `masks/` under `root`, if any."""
  root = pathlib.Path(root)
  for candidate in (root / RELEASE_FOLDER, root):
    if (candidate / "images").is_dir() and (candidate / "masks").is_dir():
      return candidate
  return None


def find_cases(root: os.PathLike[str] | str) -> list[medical_builder.Case]:
  """Lists the cases of an extracted release, sorted by name.

  A case whose mask is missing gets `label=None`, which `make_example`
  reports as an `InvalidExampleError` naming the image.

  Raises:
    FileNotFoundError: if there is no release folder or no image under
      `root`.
  """
  release = find_release(root)
  images = sorted((release / "images").glob("*.jpg")) if release else []
  if not images:
    raise FileNotFoundError(
      f"No Kvasir-SEG images found under {root}.\n"
      f"{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )
  cases = []
  for image in images:
    mask = release / "masks" / image.name
    cases.append(
      medical_builder.Case(
        case_id=image.stem,
        images=(image,),
        label=mask if mask.is_file() else None,
      )
    )
  return cases


def split_cases(
  cases: Sequence[medical_builder.Case],
) -> dict[str, list[medical_builder.Case]]:
  """Fixed split by sorted name: train first, then validation, then test."""
  cases = sorted(cases, key=lambda c: c.case_id)
  held_out = round(len(cases) * HELD_OUT_SHARE)
  num_train = len(cases) - 2 * held_out
  return {
    "train": cases[:num_train],
    "validation": cases[num_train : num_train + held_out],
    "test": cases[num_train + held_out :],
  }


class KvasirSeg(medical_builder.MedicalBuilder):
  """Kvasir-SEG polyp segmentation, 2-D RGB at native size."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  SPEC = medical_builder.BuilderSpec(
    description=_DESCRIPTION,
    class_names=CLASS_NAMES,
    channel_names=CHANNEL_NAMES,
    spatial_dims=2,
    splits=SPLITS,
    homepage="https://datasets.simula.no/kvasir-seg/",
    citation=_CITATION,
    license=_LICENSE,
  )
  PREPROCESSING = preprocessing.Preprocessing(
    canonical=False, normalization=("none",)
  )

  def _cases_per_split(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, list[medical_builder.Case]]:
    root = _local_copy(dl_manager)
    if root is None:
      root = pathlib.Path(dl_manager.download_and_extract(URL))
    return split_cases(find_cases(root))

  def _make_example(
    self, case: medical_builder.Case
  ) -> tuple[str, dict[str, Any]]:
    return case.case_id, self._read_case(
      case, label_map=_LABEL_MAP, image_transform=medical_builder.to_unit_rgb
    )


def _local_copy(
  dl_manager: tfds.download.DownloadManager,
) -> pathlib.Path | None:
  """The release in the manual dir (extracting its zip), or None."""
  manual = medical_builder.manual_dir_or_none(dl_manager)
  if manual is None:
    return None
  if find_release(manual) is not None:
    return manual
  archive = manual / ARCHIVE_NAME
  if archive.is_file():
    return pathlib.Path(dl_manager.extract(archive))
  return None
