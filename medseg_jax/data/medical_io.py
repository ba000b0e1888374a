"""Reading medical images into one in-memory form: `Volume`.

Every reader returns a `Volume`: the voxel array in *array axis order*
`(i, j[, k])` with an optional trailing channel axis, and a 4 x 4 `affine`
that maps voxel indices `(i, j, k, 1)` to world coordinates in millimetres
in NIfTI's RAS+ frame (+x towards the patient's Right, +y Anterior,
+z Superior). 2-D images get a 4 x 4 affine too, with the pixel spacing on
the diagonal (1 for PNG/JPEG/TIFF, which carry none; 2-D MetaImages keep
their in-plane frame as stored, without the LPS -> RAS flip).

Supported inputs (`read`, dispatching on the file name):

  NIfTI        .nii, .nii.gz                   nibabel
  MetaImage    .mhd (+ .raw/.zraw), .mha       our own reader (below)
               (LPS+ world, as ITK writes it, converted to RAS+)
  DICOM        a directory holding one series  pydicom
  2-D images   .png, .jpg, .jpeg, .bmp         Pillow
  TIFF         .tif, .tiff (pages -> slices)   tifffile

Every failure (missing file, unsupported type, truncated gzip, corrupt
header, DICOM series with missing slices, ...) raises `InvalidExampleError`
naming the case and the file, so a dataset build stops with a message that
says what to fix.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import zlib
from collections.abc import Sequence
from typing import Any
from typing import NoReturn

import numpy as np

from medseg_jax.data import checks

PathLike = str | os.PathLike[str]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
METAIMAGE_SUFFIXES = (".mhd", ".mha")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
SUPPORTED = (
  NIFTI_SUFFIXES
  + METAIMAGE_SUFFIXES
  + IMAGE_SUFFIXES
  + TIFF_SUFFIXES
  + ("<directory of DICOM files>",)
)


@dataclasses.dataclass
class Volume:
  """An image or label grid with its placement in the world.

  Attributes:
    data: `[*S]` or `[*S, C]` voxels in array axis order, `S` of rank 2 or 3.
    affine: `f64[4, 4]` voxel index -> RAS+ world mm.
    path: where it was read from (for error messages).
    spatial_dims: rank of `S` (the channel axis, if any, is not counted).
  """

  data: np.ndarray
  affine: np.ndarray
  path: str
  spatial_dims: int

  @property
  def shape(self) -> tuple[int, ...]:
    """Spatial shape `S`."""
    return tuple(self.data.shape[: self.spatial_dims])

  @property
  def spacing(self) -> np.ndarray:
    """Voxel size in mm along each array axis."""
    linear = self.affine[:3, : self.spatial_dims]
    return np.sqrt((linear**2).sum(axis=0))


def _fail(case_id: str, path: PathLike, problem: str) -> NoReturn:
  raise checks.InvalidExampleError(
    f"Cannot read case {case_id!r}: {os.fspath(path)}: {problem}"
  )


def file_kind(path: PathLike) -> str:
  """`"nifti"`, `"metaimage"`, `"image"`, `"tiff"`, `"dicom"` or `""`."""
  path = pathlib.Path(path)
  name = path.name.lower()
  if path.is_dir():
    return "dicom"
  for kind, suffixes in (
    ("nifti", NIFTI_SUFFIXES),
    ("metaimage", METAIMAGE_SUFFIXES),
    ("image", IMAGE_SUFFIXES),
    ("tiff", TIFF_SUFFIXES),
    ("dicom", DICOM_SUFFIXES),
  ):
    if name.endswith(suffixes):
      return kind
  return ""


def read(path: PathLike, *, case_id: str, kind: str | None = None) -> Volume:
  """Reads any supported medical image file (or DICOM series directory).

  Args:
    path: the file, or a DICOM series directory.
    case_id: quoted in errors.
    kind: a `file_kind` result, to override the guess from the file name
      (downloads can lose their suffix).

  Raises:
    InvalidExampleError: if the file is missing, of an unsupported type,
      truncated or corrupt; the message names the case and the file.
  """
  path = pathlib.Path(path)
  if not path.exists():
    _fail(case_id, path, "no such file.")
  kind = kind or file_kind(path)
  if kind == "nifti":
    return read_nifti(path, case_id=case_id)
  if kind == "metaimage":
    return read_metaimage(path, case_id=case_id)
  if kind == "image":
    return read_image_2d(path, case_id=case_id)
  if kind == "tiff":
    return read_tiff(path, case_id=case_id)
  if kind == "dicom":
    return read_dicom_series(path if path.is_dir() else [path], case_id=case_id)
  _fail(
    case_id,
    path,
    f"unsupported file type; supported: {', '.join(SUPPORTED)}.",
  )


# --------------------------------------------------------------------- NIfTI


def read_nifti(path: PathLike, *, case_id: str) -> Volume:
  """Reads a NIfTI-1/2 file; a 4-D file's last axis becomes channels."""
  import nibabel as nib  # noqa: PLC0415 - optional at import time.

  try:
    if os.fspath(path).lower().endswith(NIFTI_SUFFIXES):
      img = nib.load(os.fspath(path))
    else:  # No suffix for nibabel to go by (e.g. a download's hash name).
      img = _nifti_from_bytes(path)
    data = np.asanyarray(img.dataobj)  # Decompresses: corrupt data fails here.
    affine = np.asarray(img.affine, np.float64)
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    _fail(case_id, path, f"truncated or corrupt gzip data ({e}).")
  except Exception as e:  # noqa: BLE001 - nibabel raises many types.
    gzip_problem = _gzip_problem(path)
    if gzip_problem:  # nibabel hides it behind "cannot work out file type".
      _fail(case_id, path, f"truncated or corrupt gzip data ({gzip_problem}).")
    _fail(
      case_id, path, f"not a readable NIfTI file ({type(e).__name__}: {e})."
    )
  if data.ndim == 5 and data.shape[3] == 1:  # NIfTI's (x, y, z, t=1, c).
    data = data[:, :, :, 0]
  if data.ndim not in (2, 3, 4):
    _fail(case_id, path, f"has {data.ndim} axes {data.shape}; expected 2-4.")
  spatial_dims = 3 if data.ndim >= 3 else 2
  if not np.all(np.isfinite(affine)):
    _fail(case_id, path, "affine has NaN or Inf entries.")
  return Volume(np.asarray(data), affine, os.fspath(path), spatial_dims)


def _nifti_from_bytes(path: PathLike) -> Any:
  """Loads a NIfTI-1/2 file, gzipped or not, whatever its name."""
  import nibabel as nib  # noqa: PLC0415

  raw = pathlib.Path(path).read_bytes()
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  if len(raw) < 4:
    raise ValueError("file too short for a NIfTI header")
  sizeof_hdr = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
  image_class = nib.Nifti2Image if 540 in sizeof_hdr else nib.Nifti1Image
  return image_class.from_bytes(raw)


def _gzip_problem(path: PathLike) -> str:
  """Why a `.gz` file does not decompress ("" if it does or is not `.gz`)."""
  if not os.fspath(path).lower().endswith(".gz"):
    return ""
  try:
    with gzip.open(path, "rb") as f:
      while f.read(1 << 20):
        pass
  except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
    return f"{type(e).__name__}: {e}"
  return ""


def write_nifti(
  path: PathLike,
  data: np.ndarray,
  affine: np.ndarray,
  *,
  like: PathLike | None = None,
) -> None:
  """Writes `data` as NIfTI, keeping the header of file `like` if given."""
  import nibabel as nib  # noqa: PLC0415

  header = None
  if like is not None and file_kind(like) == "nifti":
    header = nib.load(os.fspath(like)).header.copy()
  img = nib.Nifti1Image(np.asarray(data), affine, header=header)
  img.set_data_dtype(np.asarray(data).dtype)
  if header is not None:
    img.set_qform(affine, code=int(header["qform_code"]) or 1)
    img.set_sform(affine, code=int(header["sform_code"]) or 1)
  nib.save(img, os.fspath(path))


# ----------------------------------------------------------------- MetaImage

_MET_TYPES = {
  "MET_CHAR": np.int8,
  "MET_UCHAR": np.uint8,
  "MET_SHORT": np.int16,
  "MET_USHORT": np.uint16,
  "MET_INT": np.int32,
  "MET_UINT": np.uint32,
  "MET_LONG": np.int64,
  "MET_ULONG": np.uint64,
  "MET_LONG_LONG": np.int64,
  "MET_ULONG_LONG": np.uint64,
  "MET_FLOAT": np.float32,
  "MET_DOUBLE": np.float64,
}


def _lps_to_ras(affine: np.ndarray) -> np.ndarray:
  """ITK/DICOM world (LPS+) -> NIfTI world (RAS+): negate x and y rows."""
  return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def read_metaimage(path: PathLike, *, case_id: str) -> Volume:
  """Reads a MetaImage (`.mhd` header + data file, or single-file `.mha`).

  The on-disk order is x fastest (ITK's), so the array is transposed to
  `(x, y, z)` array axis order, and the LPS+ direction and origin become a
  RAS+ affine.
  """
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
  except OSError as e:
    _fail(case_id, path, f"unreadable ({e}).")
  header: dict[str, str] = {}
  offset = 0
  for line in raw.splitlines(keepends=True):
    offset += len(line)
    text = line.decode("latin-1").strip()
    if not text:
      continue
    if "=" not in text:
      _fail(case_id, path, f"malformed header line {text[:60]!r}.")
    key, value = (part.strip() for part in text.split("=", 1))
    header[key] = value
    if key == "ElementDataFile":
      break
  try:
    ndims = int(header["NDims"])
    dims = [int(v) for v in header["DimSize"].split()]
    dtype = np.dtype(_MET_TYPES[header["ElementType"]])
    data_file = header["ElementDataFile"]
    channels = int(header.get("ElementNumberOfChannels", "1"))
    spacing = [
      float(v)
      for v in header.get(
        "ElementSpacing", header.get("ElementSize", " ".join(["1"] * ndims))
      ).split()
    ][:ndims]
    origin = [
      float(v)
      for v in header.get(
        "Offset", header.get("Origin", header.get("Position", "0 " * ndims))
      ).split()
    ][:ndims]
    direction = np.eye(ndims)
    for key in ("TransformMatrix", "Rotation", "Orientation"):
      if key in header:
        values = [float(v) for v in header[key].split()]
        # Stored column by column (each axis's direction vector in turn).
        direction = np.asarray(values).reshape(ndims, ndims).T
        break
    header_size = int(header.get("HeaderSize", "0"))
  except KeyError as e:
    _fail(case_id, path, f"header lacks or has an unknown {e} entry.")
  except ValueError as e:
    _fail(case_id, path, f"malformed header ({e}).")
  if len(dims) != ndims or ndims not in (2, 3):
    _fail(case_id, path, f"DimSize {dims} does not fit NDims {ndims} (2 or 3).")
  if len(spacing) != ndims or len(origin) != ndims or channels < 1:
    _fail(
      case_id,
      path,
      f"malformed header: ElementSpacing {spacing}, Offset {origin} or "
      f"ElementNumberOfChannels {channels} do not fit NDims {ndims}.",
    )
  big_endian = (
    header.get(
      "BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False")
    ).lower()
    == "true"
  )
  compressed = header.get("CompressedData", "False").lower() == "true"

  if data_file == "LOCAL":
    payload = raw[offset:]
  else:
    data_path = path.parent / data_file
    try:
      payload = data_path.read_bytes()
    except OSError as e:
      _fail(case_id, data_path, f"data file of {path.name} unreadable ({e}).")
    if header_size > 0:  # Bytes to skip before the voxels.
      payload = payload[header_size:]
  if compressed:
    try:
      payload = zlib.decompress(payload)
    except zlib.error as e:
      _fail(case_id, path, f"corrupt compressed data ({e}).")
  count = int(np.prod(dims)) * channels
  need = count * dtype.itemsize
  if header_size == -1 and data_file != "LOCAL" and not compressed:
    payload = payload[max(len(payload) - need, 0) :]  # Voxels at the end.
  if len(payload) < need:
    _fail(
      case_id,
      path,
      f"data is truncated: {len(payload)} bytes, expected {need} for "
      f"DimSize {dims} of {header['ElementType']}.",
    )
  dtype = dtype.newbyteorder(">" if big_endian else "<")
  flat = np.frombuffer(payload[:need], dtype=dtype).astype(
    dtype.newbyteorder("=")
  )
  shape = list(reversed(dims)) + ([channels] if channels > 1 else [])
  data = flat.reshape(shape)
  # [z, y, x(, c)] -> [x, y, z(, c)].
  order = list(reversed(range(ndims))) + ([ndims] if channels > 1 else [])
  data = np.ascontiguousarray(np.transpose(data, order))

  affine = np.eye(4)
  affine[:ndims, :ndims] = direction * np.asarray(spacing)[None, :]
  affine[:ndims, 3] = origin
  if ndims == 3:
    affine = _lps_to_ras(affine)
  return Volume(data, affine, os.fspath(path), ndims)


def write_metaimage(
  path: PathLike, data: np.ndarray, affine: np.ndarray
) -> None:
  """Writes a 3-D MetaImage (used to make dummy data and tests).

  A `.mhd` path gets a `.raw` data file beside it; a `.mha` path gets the
  voxels inside it (`ElementDataFile = LOCAL`).

  Args:
    path: `.mhd` or `.mha` file to write.
    data: `[X, Y, Z]` or `[X, Y, Z, C]` voxels in array axis order.
    affine: `f64[4, 4]` voxel index -> RAS+ world mm (stored as ITK's LPS+).
  """
  path = pathlib.Path(path)
  data = np.asarray(data)
  if data.ndim not in (3, 4):
    raise ValueError(f"Expected [X, Y, Z(, C)] data; got shape {data.shape}.")
  lps = _lps_to_ras(np.asarray(affine, np.float64))  # Its own inverse.
  spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
  direction = lps[:3, :3] / spacing[None, :]
  types = {np.dtype(v): k for k, v in reversed(_MET_TYPES.items())}
  local = path.suffix.lower() == ".mha"
  raw_name = "LOCAL" if local else path.with_suffix(".raw").name

  def numbers(values: np.ndarray) -> str:
    return " ".join(repr(float(v)) for v in values)  # Exact round trip.

  lines = [
    "ObjectType = Image",
    "NDims = 3",
    "BinaryData = True",
    "BinaryDataByteOrderMSB = False",
    "CompressedData = False",
    "TransformMatrix = " + numbers(direction.T.ravel()),
    "Offset = " + numbers(lps[:3, 3]),
    "ElementSpacing = " + numbers(spacing),
    "DimSize = " + " ".join(str(s) for s in data.shape[:3]),
  ]
  if data.ndim == 4:
    lines.append(f"ElementNumberOfChannels = {data.shape[3]}")
  lines += [
    f"ElementType = {types[data.dtype.newbyteorder('=')]}",
    f"ElementDataFile = {raw_name}",
  ]
  # On disk x runs fastest (then y, z; channels innermost of all).
  order = (2, 1, 0, 3) if data.ndim == 4 else (2, 1, 0)
  voxels = (
    np.ascontiguousarray(np.transpose(data, order))
    .astype(data.dtype.newbyteorder("<"))
    .tobytes()
  )
  header = ("\n".join(lines) + "\n").encode("latin-1")
  if local:
    path.write_bytes(header + voxels)
  else:
    path.write_bytes(header)
    (path.parent / raw_name).write_bytes(voxels)


# --------------------------------------------------------------------- DICOM


def read_dicom_series(
  files: PathLike | Sequence[PathLike], *, case_id: str
) -> Volume:
  """Reads one DICOM series (a directory, or a list of its files).

  Slices are ordered by their position along the slice normal; their
  spacing must be uniform, so a series with a missing slice is an error
  that says where the gap is.
  """
  import pydicom  # noqa: PLC0415

  if isinstance(files, (str, os.PathLike)):
    where = pathlib.Path(files)
    files = sorted(
      p
      for p in where.iterdir()
      if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR"
    )
  else:
    files = [pathlib.Path(f) for f in files]
    where = files[0].parent if files else pathlib.Path(".")
  slices = []
  for file in files:
    try:
      ds = pydicom.dcmread(os.fspath(file))
      pixels = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom raises many types.
      _fail(
        case_id, file, f"not a readable DICOM image ({type(e).__name__}: {e})."
      )
    if pixels.ndim != 2:
      _fail(
        case_id,
        file,
        f"pixel data of shape {pixels.shape}: multi-frame or colour DICOM "
        "is not supported; expected one greyscale slice per file.",
      )
    slices.append((file, ds, pixels))
  if not slices:
    _fail(case_id, where, "no DICOM files in the series directory.")
  series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds, _ in slices}
  if len(series) > 1:
    _fail(case_id, where, f"holds {len(series)} series; expected one.")
  first = slices[0][1]
  try:
    row_dir, col_dir = (
      np.asarray(first.ImageOrientationPatient[:3], float),
      np.asarray(first.ImageOrientationPatient[3:], float),
    )
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    positions = [
      np.asarray(ds.ImagePositionPatient, float) for _, ds, _ in slices
    ]
    orientations = [
      np.asarray(ds.ImageOrientationPatient, float) for _, ds, _ in slices
    ]
  except (AttributeError, TypeError, ValueError) as e:
    _fail(case_id, where, f"lacks a geometry tag or has a bad one ({e}).")
  for (file, _, _), orientation in zip(slices, orientations, strict=True):
    if orientation.shape != (6,) or not np.allclose(
      orientation, orientations[0], atol=1e-4
    ):
      _fail(
        case_id,
        file,
        f"ImageOrientationPatient {orientation.tolist()} differs from "
        f"{slices[0][0].name}'s {orientations[0].tolist()}; a series must "
        "be one stack of parallel slices.",
      )
  normal = np.cross(row_dir, col_dir)
  depth = np.asarray([p @ normal for p in positions])
  order = np.argsort(depth)
  depth = depth[order]
  if len(slices) > 1:
    steps = np.diff(depth)
    if np.any(steps <= 1e-6):
      _fail(case_id, where, "two slices share one position.")
    step = np.median(steps)
    gaps = np.flatnonzero(np.abs(steps - step) > 0.1 * step)
    if gaps.size:
      gap = int(gaps[0])
      missing = int(round(steps[gap] / step)) - 1
      _fail(
        case_id,
        where,
        f"series has missing slices: a gap of {steps[gap]:.3g} mm between "
        f"{slices[order[gap]][0].name} and {slices[order[gap + 1]][0].name} "
        f"(the others are {step:.3g} mm apart; about {missing} slice(s) "
        "missing).",
      )
  else:
    step = float(getattr(first, "SliceThickness", 1.0) or 1.0)
  shapes = {pixels.shape for _, _, pixels in slices}
  if len(shapes) != 1:
    _fail(case_id, where, f"slices differ in shape: {sorted(shapes)}.")
  stack = []
  for index in order:
    _, ds, pixels = slices[index]
    values = pixels.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    stack.append(values * slope + intercept)
  # pixel_array is [rows, cols] = [y, x]; make it [x(col), y(row), slice].
  data = np.stack([s.T for s in stack], axis=-1)
  affine = np.eye(4)
  affine[:3, 0] = row_dir * col_spacing  # Along a row: column index grows.
  affine[:3, 1] = col_dir * row_spacing
  affine[:3, 2] = normal * step
  affine[:3, 3] = positions[order[0]]
  return Volume(data, _lps_to_ras(affine), os.fspath(where), 3)


# --------------------------------------------------------------- 2-D images


def read_image_2d(path: PathLike, *, case_id: str) -> Volume:
  """Reads a PNG/JPEG/BMP; colour images get a channel axis."""
  pixels = checks.read_image(path, case_id=case_id)
  if pixels.ndim == 3 and pixels.shape[-1] == 4:  # Drop alpha.
    pixels = pixels[..., :3]
  elif pixels.ndim == 3 and pixels.shape[-1] == 2:  # Grey + alpha.
    pixels = pixels[..., 0]
  # Pillow gives [rows, cols]; keep that order (axis 0 = image y).
  return Volume(pixels, np.eye(4), os.fspath(path), 2)


def read_tiff(path: PathLike, *, case_id: str) -> Volume:
  """Reads a TIFF: one page is a 2-D image, several pages a 3-D stack."""
  import tifffile  # noqa: PLC0415

  try:
    data = tifffile.imread(os.fspath(path))
  except Exception as e:  # noqa: BLE001 - tifffile raises many types.
    _fail(case_id, path, f"not a readable TIFF ({type(e).__name__}: {e}).")
  data = np.asarray(data)
  spatial_dims = (
    2 if data.ndim == 2 or (data.ndim == 3 and data.shape[-1] in (3, 4)) else 3
  )
  return Volume(data, np.eye(4), os.fspath(path), spatial_dims)


def write_image_2d(path: PathLike, data: np.ndarray) -> None:
  """Writes a 2-D uint8 array as PNG (or any Pillow format by suffix)."""
  from PIL import Image  # noqa: PLC0415

  Image.fromarray(np.asarray(data)).save(os.fspath(path))
