"""Writes tiny random `from_folder` data folders, one per file format.

Never real data: each case is noise plus a brighter box that is also the
label. The folders have the layout a user would make (see `from_folder`):

  nifti      3-D, two channels as case000_0000.nii.gz + case000_0001.nii.gz,
             label case000.nii.gz, a left-pointing x axis (LAS), 25%
             validation.
  png        2-D RGB case000.png, labels 0/255 (label_map), explicit splits
             train/test.
  dicom      3-D CT, each image a DICOM series directory case000/ of
             IM-0001-0001.dcm ..., labels NIfTI on the same grid, resampled
             to a target spacing, CT window.
  tiff       3-D multi-page TIFF images and labels, all cases in train.
  metaimage  3-D .mha (data inside) images, .mhd + .raw labels, 25% test.

  python -m medseg_jax.data.from_folder.dummy_data --out /tmp/my_data \
      --format dicom

`make_small_volumes` writes a different kind of folder: 3-D NIfTI cases
smaller than a typical training patch (about 24 x 32 x 24 voxels, varying
per case), each a bright ellipsoid split into two labelled halves in a
darker, noisy surround, like the hippocampus crops of the Medical
Segmentation Decathlon. It exists to check that evaluation treats cases
smaller than the patch as training did (see `evaluation/case_predictor`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg_jax.data import medical_io

FORMATS = ("nifti", "png", "dicom", "tiff", "metaimage")

# 3-D case shape in array axis order, and the per-format grids.
SHAPE_3D = (8, 7, 5)
SHAPE_2D = (12, 10)
NIFTI_AFFINE = np.array(
  [
    [-1.0, 0.0, 0.0, 10.0],
    [0.0, 1.2, 0.0, -5.0],
    [0.0, 0.0, 2.0, 3.0],
    [0.0, 0.0, 0.0, 1.0],
  ]
)
DICOM_PIXEL_SPACING = (0.8, 0.8)  # (between rows, between columns), mm.
DICOM_SLICE_STEP = 2.5
DICOM_ORIGIN_LPS = (-20.0, -30.0, 40.0)
DICOM_TARGET_SPACING = (1.0, 1.0, 2.0)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _case(
  rng: np.random.Generator, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
  """Noise in [0, 100) plus 100 inside a random box; the box is the label."""
  label = np.zeros(shape, np.uint8)
  box = tuple(
    slice(int(lo), int(lo) + max(size // 2, 1))
    for lo, size in zip(
      (rng.integers(0, max(s - s // 2, 1)) for s in shape), shape, strict=True
    )
  )
  label[box] = 1
  image = rng.uniform(0, 100, shape) + 100.0 * label
  return image.astype(np.float32), label


def dicom_affine(
  *,
  pixel_spacing: Sequence[float] = DICOM_PIXEL_SPACING,
  slice_step: float = DICOM_SLICE_STEP,
  origin_lps: Sequence[float] = DICOM_ORIGIN_LPS,
  row_dir: Sequence[float] = (1.0, 0.0, 0.0),
  col_dir: Sequence[float] = (0.0, 1.0, 0.0),
) -> np.ndarray:
  """RAS+ affine of the grid `write_dicom_series` writes (array `[X, Y, Z]`).

  Axis 0 runs along a row (column index, `row_dir`, spacing between
  columns), axis 1 down a column (`col_dir`), axis 2 along the slice normal
  `row_dir x col_dir`; voxel (0, 0, 0) is at `origin_lps`.
  """
  row_dir = np.asarray(row_dir, float)
  col_dir = np.asarray(col_dir, float)
  lps = np.eye(4)
  lps[:3, 0] = row_dir * pixel_spacing[1]
  lps[:3, 1] = col_dir * pixel_spacing[0]
  lps[:3, 2] = np.cross(row_dir, col_dir) * slice_step
  lps[:3, 3] = origin_lps
  return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_dicom_series(
  directory: pathlib.Path,
  hu: np.ndarray,
  *,
  pixel_spacing: Sequence[float] = DICOM_PIXEL_SPACING,
  slice_step: float = DICOM_SLICE_STEP,
  origin_lps: Sequence[float] = DICOM_ORIGIN_LPS,
  row_dir: Sequence[float] = (1.0, 0.0, 0.0),
  col_dir: Sequence[float] = (0.0, 1.0, 0.0),
  slope: float = 1.0,
  intercept: float = -1024.0,
  names: Sequence[str] | None = None,
) -> list[pathlib.Path]:
  """Writes `hu` (`[X, Y, Z]`, Hounsfield units) as a CT DICOM series.

  One file per slice `k`, its pixels `hu[:, :, k].T` stored as
  `(hu - intercept) / slope` in 16 bits, placed at
  `origin_lps + k * slice_step * normal`. Returns the files, in slice
  order; `names` overrides their names (default `IM-0001-0001.dcm`, ...).
  """
  import pydicom  # noqa: PLC0415
  from pydicom.dataset import FileMetaDataset  # noqa: PLC0415
  from pydicom.uid import ExplicitVRLittleEndian  # noqa: PLC0415
  from pydicom.uid import generate_uid  # noqa: PLC0415

  directory.mkdir(parents=True, exist_ok=True)
  hu = np.asarray(hu, np.float64)
  stored = np.round((hu - intercept) / slope)
  signed = stored.min() < 0
  dtype = "<i2" if signed else "<u2"
  row_dir = np.asarray(row_dir, float)
  col_dir = np.asarray(col_dir, float)
  normal = np.cross(row_dir, col_dir)
  study, series, frame = generate_uid(), generate_uid(), generate_uid()
  files = []
  for k in range(hu.shape[2]):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = frame
    ds.Modality = "CT"
    ds.PatientID = "DUMMY"
    ds.PatientName = "Dummy^Phantom"
    ds.SeriesNumber = 1
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [
      float(v) for v in np.asarray(origin_lps) + k * slice_step * normal
    ]
    ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SliceThickness = float(slice_step)
    ds.RescaleSlope = float(slope)
    ds.RescaleIntercept = float(intercept)
    ds.RescaleType = "HU"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    ds.PixelData = (
      np.ascontiguousarray(stored[:, :, k].T).astype(dtype).tobytes()
    )
    name = names[k] if names is not None else f"IM-0001-{k + 1:04d}.dcm"
    path = directory / name
    ds.save_as(path, enforce_file_format=True)
    files.append(path)
  return files


def _write_tiff(path: pathlib.Path, stack: np.ndarray) -> None:
  import tifffile  # noqa: PLC0415

  tifffile.imwrite(path, stack, photometric="minisblack")


def make_dummy_data(
  root: pathlib.Path, *, fmt: str = "nifti", num_cases: int = 4, seed: int = 0
) -> pathlib.Path:
  """Writes a data folder `root/<fmt>_data` of `num_cases` cases.

  Args:
    root: parent directory (created if needed).
    fmt: one of `FORMATS` (see the module docstring).
    num_cases: cases `case000`, `case001`, ...
    seed: of the random content.

  Returns:
    The data folder (holding `dataset.json`, `images/`, `labels/`).
  """
  if fmt not in FORMATS:
    raise ValueError(f"Unknown format {fmt!r}; valid: {', '.join(FORMATS)}.")
  rng = np.random.default_rng(seed)
  folder = pathlib.Path(root) / f"{fmt}_data"
  images = folder / "images"
  labels = folder / "labels"
  images.mkdir(parents=True, exist_ok=True)
  labels.mkdir(parents=True, exist_ok=True)
  ids = [f"case{i:03d}" for i in range(num_cases)]
  spec: dict[str, Any] = {"name": f"dummy_{fmt}"}

  if fmt == "nifti":
    spec.update(
      spatial_dims=3,
      channel_names=["T1", "FLAIR"],
      class_names=["background", "lesion"],
      normalization=["mri", "zscore"],
      validation_fraction=0.25,
    )
    for case_id in ids:
      image, label = _case(rng, SHAPE_3D)
      for channel, scale in enumerate((1.0, 2.0)):
        medical_io.write_nifti(
          images / f"{case_id}_{channel:04d}.nii.gz",
          image * scale,
          NIFTI_AFFINE,
        )
      medical_io.write_nifti(labels / f"{case_id}.nii.gz", label, NIFTI_AFFINE)

  elif fmt == "png":
    spec.update(
      spatial_dims=2,
      channel_names=["R", "G", "B"],
      class_names=["background", "polyp"],
      normalization="minmax",
      label_map={"0": 0, "255": 1},
      splits={"train": ids[:-1], "test": ids[-1:]},
    )
    for case_id in ids:
      image, label = _case(rng, SHAPE_2D)
      rgb = np.stack([image, image * 0.5, 200 - image * 0.5], axis=-1)
      medical_io.write_image_2d(
        images / f"{case_id}.png", np.clip(rgb, 0, 255).astype(np.uint8)
      )
      medical_io.write_image_2d(labels / f"{case_id}.png", label * 255)

  elif fmt == "dicom":
    spec.update(
      spatial_dims=3,
      channel_names=["CT"],
      class_names=["background", "organ"],
      normalization=["ct"],
      ct_window=[-200, 300],
      spacing=list(DICOM_TARGET_SPACING),
      validation_fraction=0.25,
    )
    affine = dicom_affine()
    for case_id in ids:
      image, label = _case(rng, SHAPE_3D)
      write_dicom_series(images / case_id, image * 3 - 100)
      medical_io.write_nifti(labels / f"{case_id}.nii.gz", label, affine)

  elif fmt == "tiff":
    spec.update(
      spatial_dims=3,
      channel_names=["EM"],
      class_names=["background", "membrane"],
      normalization="zscore",
    )
    for case_id in ids:
      image, label = _case(rng, SHAPE_3D)
      _write_tiff(images / f"{case_id}.tif", image.astype(np.uint8))
      _write_tiff(labels / f"{case_id}.tiff", label)

  else:  # metaimage
    spec.update(
      spatial_dims=3,
      channel_names=["T2"],
      class_names=["background", "prostate"],
      normalization="mri",
      test_fraction=0.25,
    )
    affine = np.diag([0.6, 0.6, 3.0, 1.0])
    affine[:3, 3] = (-2.0, 4.0, -6.0)
    for case_id in ids:
      image, label = _case(rng, SHAPE_3D)
      medical_io.write_metaimage(
        images / f"{case_id}.mha", image.astype(np.int16), affine
      )
      medical_io.write_metaimage(labels / f"{case_id}.mhd", label, affine)

  (folder / "dataset.json").write_text(json.dumps(spec, indent=2) + "\n")
  return folder


def make_small_volumes(
  root: pathlib.Path,
  *,
  num_cases: int = 20,
  shape: Sequence[int] = (24, 32, 24),
  jitter: int = 3,
  seed: int = 0,
) -> pathlib.Path:
  """Writes `root/small_volumes`: 3-D cases smaller than a training patch.

  Each case is `shape` plus a random `[-jitter, jitter]` per axis, holding
  an ellipsoid (classes 1 "anterior" and 2 "posterior": its two halves
  along the first axis) of intensity about 2 with noise, in a surround of
  intensity about 1, in a background of 0. 20 % of the cases (the last by
  id) are `test`, the 20 % before them `validation`.

  Args:
    root: parent directory (created if needed).
    num_cases: cases `case000`, `case001`, ...
    shape: mean case shape (array axis order).
    jitter: largest per-axis deviation from `shape`.
    seed: of the random content.

  Returns:
    The data folder (holding `dataset.json`, `images/`, `labels/`).
  """
  rng = np.random.default_rng(seed)
  folder = pathlib.Path(root) / "small_volumes"
  (folder / "images").mkdir(parents=True, exist_ok=True)
  (folder / "labels").mkdir(parents=True, exist_ok=True)
  for index in range(num_cases):
    size = [int(s) + int(rng.integers(-jitter, jitter + 1)) for s in shape]
    grid = np.stack(
      np.meshgrid(
        *[np.arange(s, dtype=np.float32) for s in size], indexing="ij"
      )
    )
    centre = np.array([s / 2 for s in size]) + rng.uniform(-1.5, 1.5, 3)
    radii = np.array([s * 0.3 for s in size]) * rng.uniform(0.8, 1.1, 3)
    offset = (grid - centre[:, None, None, None]) / radii[:, None, None, None]
    inside = np.sum(offset**2, axis=0) <= 1.0
    surround = np.sum((offset / 1.6) ** 2, axis=0) <= 1.0
    label = np.zeros(size, np.uint8)
    label[inside] = 1
    label[inside & (grid[0] >= centre[0])] = 2
    image = 1.0 * surround + 1.0 * inside + 0.1 * (label == 2)
    image = image + rng.normal(0.0, 0.25, size)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    case_id = f"case{index:03d}"
    medical_io.write_nifti(
      folder / "images" / f"{case_id}.nii.gz", image.astype(np.float32), affine
    )
    medical_io.write_nifti(
      folder / "labels" / f"{case_id}.nii.gz", label, affine
    )
  spec = {
    "name": "small_volumes",
    "spatial_dims": 3,
    "channel_names": ["MRI"],
    "class_names": ["background", "anterior", "posterior"],
    "normalization": "zscore",
    "validation_fraction": 0.2,
    "test_fraction": 0.2,
  }
  (folder / "dataset.json").write_text(json.dumps(spec, indent=2) + "\n")
  return folder


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument(
    "--format", default="nifti", choices=(*FORMATS, "small_volumes")
  )
  parser.add_argument("--num_cases", default=4, type=int)
  args = parser.parse_args(argv)
  if args.format == "small_volumes":
    folder = make_small_volumes(args.out, num_cases=args.num_cases)
  else:
    folder = make_dummy_data(
      args.out, fmt=args.format, num_cases=args.num_cases
    )
  print(folder)


if __name__ == "__main__":
  main()
