"""TFDS builder for `isbi2012_em`: the ISBI 2012 EM membrane training stack.

The data must be fetched by hand (see `MANUAL_DOWNLOAD_INSTRUCTIONS`), then:

  from medseg_jax.data import registry
  registry.prepare("isbi2012_em", data_dir="/tmp/tfds", manual_dir="/data/em")
  train = registry.data_source("isbi2012_em", "train", "/tmp/tfds")
"""

import dataclasses
import os
import pathlib
from typing import Any
from typing import NoReturn

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from medseg_jax.data import checks
from medseg_jax.data import medical_builder

CLASS_NAMES = ("cell_interior", "membrane")
NUM_SLICES = 30
IMAGE_SHAPE = (512, 512)
# 4 nm x 4 nm pixels (sections are about 50 nm thick), in millimetres.
SPACING_MM = (4e-6, 4e-6)
# Fixed validation fold: a contiguous block of neighbouring sections.
SPLIT_SLICES = {"train": range(0, 24), "validation": range(24, 30)}

# Raw label convention of the challenge files.
_RAW_MEMBRANE = 0
_RAW_INTERIOR = 255

_TIFF_IMAGES = "train-volume.tif"
_TIFF_LABELS = "train-labels.tif"

_CITATION = """\
@article{cardona2010integrated,
  title={An Integrated Micro- and Macroarchitectural Analysis of the
         Drosophila Brain by Computer-Assisted Serial Section Electron
         Microscopy},
  author={Cardona, Albert and Saalfeld, Stephan and Preibisch, Stephan and
          Schmid, Benjamin and Cheng, Anchi and Pulokas, Jim and
          Tomancak, Pavel and Hartenstein, Volker},
  journal={PLoS Biology},
  volume={8},
  number={10},
  pages={e1000502},
  year={2010}
}
@article{arganda2015crowdsourcing,
  title={Crowdsourcing the creation of image segmentation algorithms for
         connectomics},
  author={Arganda-Carreras, Ignacio and Turaga, Srinivas C. and
          Berger, Daniel R. and Cire{\\c{s}}an, Dan and Giusti, Alessandro and
          Gambardella, Luca M. and Schmidhuber, J{\\"u}rgen and
          Laptev, Dmitry and Dwivedi, Sarvesh and Buhmann, Joachim M. and
          others},
  journal={Frontiers in Neuroanatomy},
  volume={9},
  pages={142},
  year={2015}
}
"""

_TERMS = (
  "Non-commercial use only. The organisers state: you are free to use this "
  "data set for the purpose of generating or testing non-commercial image "
  "segmentation software; if any scientific publications derive from the "
  "usage of this data set, you must cite TrakEM2 (Cardona et al., PLoS ONE "
  "2012) and Cardona et al., PLoS Biol 8(10): e1000502 (2010). No licence "
  "for redistribution is given."
)

_DESCRIPTION = f"""\
ISBI 2012 challenge "Segmentation of neuronal structures in EM stacks": 30
consecutive serial-section TEM sections (512 x 512 pixels, about 4 x 4 nm
per pixel, 50 nm sections) of the Drosophila first-instar larva ventral nerve
cord, with expert membrane labels. This is the data of the original U-Net
paper (Ronneberger et al., MICCAI 2015). The challenge's test stack has no
public labels and is not included.

Classes: 0 cell_interior (background), 1 membrane (the raw label files use
255 for cell interior and 0 for membrane).

Splits: `train` is slices 0-23 and `validation` is slices 24-29. The
validation fold is a contiguous block, not a random sample, because
neighbouring sections are strongly correlated: a random split would put near
copies of validation slices into training.

Features: `image` f32[512, 512, 1] in [0, 1] (8-bit values / 255); `label`
u8[512, 512]; `spacing` f32[2] = (4e-6, 4e-6) mm; `case_id` "slice_00" to
"slice_29" (returned as `bytes` by `tfds.data_source`).

Terms: {_TERMS}
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the ISBI 2012 EM training data yourself (the organisers' site,
http://brainiac2.mit.edu/isbi_challenge/, requires registration) and point
`manual_dir` at a folder holding either

  1. the per-slice PNGs (as in github.com/zhixuhao/unet, data/membrane):
       <manual_dir>/membrane/train/image/0.png ... 29.png
       <manual_dir>/membrane/train/label/0.png ... 29.png
     (`manual_dir` may also be the `membrane` folder or its `train` folder);
  2. or the organisers' multi-page TIFF stacks:
       <manual_dir>/{_TIFF_IMAGES}
       <manual_dir>/{_TIFF_LABELS}

Images are 8-bit grayscale; labels are 255 (cell interior) and 0 (membrane).
If both layouts are present, the PNGs are used. Terms: {_TERMS}
"""


@dataclasses.dataclass(frozen=True)
class _Source:
  """Where the slices are: one file per slice, or one multi-page stack each.

  Attributes:
    image_files: the image file of each slice, or the one image stack.
    label_files: the label file of each slice, or the one label stack.
    multi_page: whether the files are stacks in which page `i` is slice `i`.
  """

  image_files: tuple[pathlib.Path, ...]
  label_files: tuple[pathlib.Path, ...]
  multi_page: bool

  def read(self, index: int, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads and validates slice `index`.

    Returns:
      `(image, label)`: `f32[512, 512, 1]` in [0, 1] and `u8[512, 512]` with
      1 for membrane.

    Raises:
      InvalidExampleError: naming the slice and file, if a file is missing or
        corrupt, not 8-bit grayscale, of the wrong shape, or if the label has
        values other than 0 and 255.
    """
    if self.multi_page:
      image_path, label_path = self.image_files[0], self.label_files[0]
      page = index
    else:
      image_path, label_path = self.image_files[index], self.label_files[index]
      page = 0
    raw_image = checks.read_image(image_path, case_id=case_id, page=page)
    raw_label = checks.read_image(label_path, case_id=case_id, page=page)

    def fail(path: pathlib.Path, problem: str) -> NoReturn:
      where = f"page {page} of {path}" if self.multi_page else str(path)
      raise checks.InvalidExampleError(
        f"Invalid example {case_id!r} ({where}): {problem}"
      )

    for name, raw, path in (
      ("image", raw_image, image_path),
      ("label", raw_label, label_path),
    ):
      if raw.dtype != np.uint8 or raw.ndim != 2:
        fail(
          path,
          f"{name} must be 8-bit grayscale; got dtype {raw.dtype} and shape "
          f"{raw.shape}.",
        )
    unexpected = (raw_label != _RAW_MEMBRANE) & (raw_label != _RAW_INTERIOR)
    if unexpected.any():
      fail(
        label_path,
        f"label values must be {_RAW_INTERIOR} (cell interior) or "
        f"{_RAW_MEMBRANE} (membrane); found "
        f"{np.unique(raw_label[unexpected])[:10].tolist()} in "
        f"{np.count_nonzero(unexpected)} pixels.",
      )

    image = (raw_image.astype(np.float32) / 255.0)[..., None]
    label = (raw_label == _RAW_MEMBRANE).astype(np.uint8)
    checks.check_example(
      image,
      label,
      num_classes=len(CLASS_NAMES),
      case_id=case_id,
      path=(image_path, label_path),
      spatial_dims=2,
    )
    if label.shape != IMAGE_SHAPE:
      fail(image_path, f"shape is {label.shape}; expected {IMAGE_SHAPE}.")
    return image, label


def _find_source(manual_dir: os.PathLike[str] | str) -> _Source:
  """Finds the slices in one of the layouts of MANUAL_DOWNLOAD_INSTRUCTIONS.

  Raises:
    FileNotFoundError: if no accepted layout is found.
    InvalidExampleError: if a TIFF stack does not have one page per slice.
  """
  root = pathlib.Path(manual_dir)
  for train_dir in (root / "membrane" / "train", root / "train", root):
    image_dir, label_dir = train_dir / "image", train_dir / "label"
    if image_dir.is_dir() and label_dir.is_dir():
      return _Source(
        image_files=tuple(image_dir / f"{i}.png" for i in range(NUM_SLICES)),
        label_files=tuple(label_dir / f"{i}.png" for i in range(NUM_SLICES)),
        multi_page=False,
      )
  stacks = (root / _TIFF_IMAGES, root / _TIFF_LABELS)
  if all(path.is_file() for path in stacks):
    for path in stacks:
      try:
        with Image.open(path) as img:
          num_pages = getattr(img, "n_frames", 1)
      except Exception as e:  # noqa: BLE001 - any Pillow failure.
        raise checks.InvalidExampleError(
          f"Cannot read {path}: unreadable or corrupt "
          f"({type(e).__name__}: {e})."
        ) from e
      if num_pages != NUM_SLICES:
        raise checks.InvalidExampleError(
          f"{path} has {num_pages} pages; expected {NUM_SLICES}, one per slice."
        )
    return _Source(
      image_files=stacks[:1], label_files=stacks[1:], multi_page=True
    )
  raise FileNotFoundError(
    f"No ISBI 2012 EM training data found in {root}.\n"
    f"{MANUAL_DOWNLOAD_INSTRUCTIONS}"
  )


class Isbi2012Em(medical_builder.MedicalBuilder):
  """ISBI 2012 EM membrane segmentation (30 labelled 512 x 512 sections).

  Splits are fixed: `train` = slices 0-23, `validation` = slices 24-29, a
  contiguous block because neighbouring sections are correlated (see
  `SPLIT_SLICES`). Examples are stored in slice order (`ds[i]` of
  `validation` is slice `24 + i`) as ArrayRecord, the default file format of
  this builder. Every slice is validated while building (`checks`); a
  missing, corrupt or inconsistent file aborts the build with an
  `InvalidExampleError` naming the slice and the file.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  SPEC = medical_builder.BuilderSpec(
    description=_DESCRIPTION,
    class_names=CLASS_NAMES,
    channel_names=("EM",),
    spatial_dims=2,
    splits=tuple(SPLIT_SLICES),
    needs_manual_dir=True,
    homepage="http://brainiac2.mit.edu/isbi_challenge/",
    citation=_CITATION,
    license=_TERMS,
    shape=IMAGE_SHAPE,
    image_encoding=tfds.features.Encoding.BYTES,
    medical=False,
  )

  def _cases_per_split(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, list[tuple[_Source, int]]]:
    source = _find_source(dl_manager.manual_dir)
    return {
      split: [(source, index) for index in slices]
      for split, slices in SPLIT_SLICES.items()
    }

  def _make_example(
    self, case: tuple[_Source, int]
  ) -> tuple[int, dict[str, Any]]:
    source, index = case
    case_id = f"slice_{index:02d}"
    image, label = source.read(index, case_id)
    return index, {
      "image": image,
      "label": label,
      "spacing": np.asarray(SPACING_MM, np.float32),
      "case_id": case_id,
    }
