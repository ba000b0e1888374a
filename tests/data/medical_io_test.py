"""Tests for `medical_io`: every reader on tiny files written here."""

import gzip
import pathlib
import zlib

import nibabel as nib
import nibabel.orientations
import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg_jax.data import checks
from medseg_jax.data import medical_io
from medseg_jax.data.from_folder import dummy_data

# A rotated, anisotropic, shifted grid.
_ANGLE = np.deg2rad(30.0)
OBLIQUE = np.array(
  [
    [0.9 * np.cos(_ANGLE), -1.1 * np.sin(_ANGLE), 0.0, -12.5],
    [0.9 * np.sin(_ANGLE), 1.1 * np.cos(_ANGLE), 0.0, 7.25],
    [0.0, 0.0, 2.5, 30.0],
    [0.0, 0.0, 0.0, 1.0],
  ]
)


def _ramp(shape, dtype=np.int16):
  return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


# ------------------------------------------------------------------ NIfTI


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_keeps_data_and_affine(tmp_path, suffix):
  data = _ramp((5, 4, 3))
  path = tmp_path / f"x{suffix}"
  medical_io.write_nifti(path, data, OBLIQUE)
  volume = medical_io.read(path, case_id="c")
  assert volume.spatial_dims == 3
  assert volume.shape == (5, 4, 3)
  assert volume.path == str(path)
  assert volume.data.dtype == np.int16
  np.testing.assert_array_equal(volume.data, data)
  np.testing.assert_allclose(volume.affine, OBLIQUE, atol=1e-5)
  np.testing.assert_allclose(volume.spacing, (0.9, 1.1, 2.5), rtol=1e-6)


def test_nifti_write_like_keeps_the_header_codes(tmp_path):
  medical_io.write_nifti(tmp_path / "a.nii.gz", _ramp((3, 3, 3)), OBLIQUE)
  medical_io.write_nifti(
    tmp_path / "b.nii.gz",
    np.ones((3, 3, 3), np.uint8),
    OBLIQUE,
    like=tmp_path / "a.nii.gz",
  )
  img = nib.load(tmp_path / "b.nii.gz")
  assert img.get_data_dtype() == np.uint8
  assert int(img.header["sform_code"]) >= 1
  np.testing.assert_allclose(img.affine, OBLIQUE, atol=1e-5)


def test_4d_nifti_becomes_channels(tmp_path):
  data = np.random.default_rng(0).random((4, 5, 6, 2)).astype(np.float32)
  medical_io.write_nifti(tmp_path / "x.nii.gz", data, np.eye(4))
  volume = medical_io.read(tmp_path / "x.nii.gz", case_id="c")
  assert volume.spatial_dims == 3
  assert volume.shape == (4, 5, 6)
  assert volume.data.shape == (4, 5, 6, 2)
  np.testing.assert_array_equal(volume.data, data)


def test_2d_nifti(tmp_path):
  medical_io.write_nifti(tmp_path / "x.nii", _ramp((4, 6)), np.eye(4))
  volume = medical_io.read(tmp_path / "x.nii", case_id="c")
  assert volume.spatial_dims == 2
  assert volume.shape == (4, 6)


@pytest.mark.parametrize("shape", [(3, 3, 3), (40, 40, 40)])
def test_truncated_gzip_names_the_file(tmp_path, shape):
  # Small files lose their header, large ones only the voxels.
  path = tmp_path / "cut.nii.gz"
  data = np.random.default_rng(0).integers(0, 1000, shape).astype(np.int16)
  medical_io.write_nifti(path, data, np.eye(4))
  raw = path.read_bytes()
  path.write_bytes(raw[: len(raw) // 2])
  with pytest.raises(
    checks.InvalidExampleError, match="truncated or corrupt gzip"
  ) as info:
    medical_io.read(path, case_id="case7")
  assert str(path) in str(info.value)
  assert "'case7'" in str(info.value)


def test_not_a_nifti(tmp_path):
  path = tmp_path / "x.nii"
  path.write_bytes(b"not an image at all")
  with pytest.raises(checks.InvalidExampleError, match="x.nii"):
    medical_io.read(path, case_id="c")
  gz = tmp_path / "y.nii.gz"
  gz.write_bytes(gzip.compress(b"not an image at all"))
  with pytest.raises(checks.InvalidExampleError, match="not a readable NIfTI"):
    medical_io.read(gz, case_id="c")


# -------------------------------------------------------------- MetaImage


@pytest.mark.parametrize("suffix", [".mhd", ".mha"])
@pytest.mark.parametrize("channels", [0, 2])
def test_metaimage_round_trip(tmp_path, suffix, channels):
  shape = (5, 4, 3) + ((channels,) if channels else ())
  data = _ramp(shape, np.float32)
  path = tmp_path / f"x{suffix}"
  medical_io.write_metaimage(path, data, OBLIQUE)
  assert (tmp_path / "x.raw").exists() == (suffix == ".mhd")
  if suffix == ".mha":
    assert b"ElementDataFile = LOCAL" in path.read_bytes()
  volume = medical_io.read(path, case_id="c")
  assert volume.spatial_dims == 3
  assert volume.shape == (5, 4, 3)
  np.testing.assert_array_equal(volume.data, data)
  np.testing.assert_allclose(volume.affine, OBLIQUE, atol=1e-12)


def test_metaimage_lps_becomes_ras_as_nibabel_sees_it(tmp_path):
  # Identity direction in ITK's LPS+ world: axes run to Left, Posterior,
  # Superior; the origin (10, 20, 30) LPS is (-10, -20, 30) RAS.
  header = (
    "ObjectType = Image\nNDims = 3\nBinaryData = True\n"
    "BinaryDataByteOrderMSB = False\nCompressedData = False\n"
    "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 10 20 30\n"
    "ElementSpacing = 1 2 3\nDimSize = 2 3 4\nElementType = MET_UCHAR\n"
    "ElementDataFile = x.raw\n"
  )
  (tmp_path / "x.mhd").write_text(header)
  (tmp_path / "x.raw").write_bytes(bytes(range(24)))
  volume = medical_io.read(tmp_path / "x.mhd", case_id="c")
  assert nibabel.orientations.aff2axcodes(volume.affine) == ("L", "P", "S")
  np.testing.assert_allclose(volume.affine[:3, 3], (-10, -20, 30))
  np.testing.assert_allclose(np.diag(volume.affine), (-1, -2, 3, 1))
  # x runs fastest on disk.
  assert volume.data[1, 0, 0] == 1
  assert volume.data[0, 1, 0] == 2
  assert volume.data[0, 0, 1] == 6

  # A direction whose first axis points to -x in LPS (Right), second to
  # +z (Superior), third to +y (Posterior); stored column by column.
  header = header.replace(
    "TransformMatrix = 1 0 0 0 1 0 0 0 1",
    "TransformMatrix = -1 0 0 0 0 1 0 1 0",
  )
  (tmp_path / "x.mhd").write_text(header)
  volume = medical_io.read(tmp_path / "x.mhd", case_id="c")
  assert nibabel.orientations.aff2axcodes(volume.affine) == ("R", "S", "P")


def test_mha_with_local_data_big_endian_and_compressed(tmp_path):
  data = _ramp((4, 3, 2))  # [x, y, z]
  on_disk = np.transpose(data, (2, 1, 0)).astype(">i2").tobytes()
  for compressed in (False, True):
    payload = zlib.compress(on_disk) if compressed else on_disk
    header = (
      "ObjectType = Image\nNDims = 3\nBinaryData = True\n"
      "BinaryDataByteOrderMSB = True\n"
      f"CompressedData = {compressed}\n"
      "Offset = 0 0 0\nElementSpacing = 0.5 0.5 4\nDimSize = 4 3 2\n"
      "ElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    path = tmp_path / f"local_{compressed}.mha"
    path.write_bytes(header.encode() + payload)
    volume = medical_io.read(path, case_id="c")
    np.testing.assert_array_equal(volume.data, data)
    np.testing.assert_allclose(volume.spacing, (0.5, 0.5, 4))


def test_metaimage_errors_name_the_file(tmp_path):
  medical_io.write_metaimage(tmp_path / "x.mhd", _ramp((4, 3, 2)), np.eye(4))
  raw = (tmp_path / "x.raw").read_bytes()
  (tmp_path / "x.raw").write_bytes(raw[:5])
  with pytest.raises(checks.InvalidExampleError, match="truncated") as info:
    medical_io.read(tmp_path / "x.mhd", case_id="c")
  assert "x.mhd" in str(info.value)

  (tmp_path / "x.raw").unlink()
  with pytest.raises(checks.InvalidExampleError, match="x.raw"):
    medical_io.read(tmp_path / "x.mhd", case_id="c")

  text = (tmp_path / "x.mhd").read_text()
  (tmp_path / "x.mhd").write_text(
    text.replace("ElementSpacing = 1.0 1.0 1.0", "ElementSpacing = 1 one 1")
  )
  with pytest.raises(checks.InvalidExampleError, match="malformed header"):
    medical_io.read(tmp_path / "x.mhd", case_id="c")

  (tmp_path / "y.mhd").write_text("NDims = 3\nElementDataFile = y.raw\n")
  with pytest.raises(checks.InvalidExampleError, match="DimSize"):
    medical_io.read(tmp_path / "y.mhd", case_id="c")


# ------------------------------------------------------------------ DICOM

# Rotated 30 degrees about z; rows 0.7 mm apart, columns 0.6 mm apart.
_ROW_DIR = (np.cos(_ANGLE), np.sin(_ANGLE), 0.0)
_COL_DIR = (-np.sin(_ANGLE), np.cos(_ANGLE), 0.0)
_GEOMETRY = dict(
  pixel_spacing=(0.7, 0.6),
  slice_step=3.0,
  origin_lps=(15.0, -40.0, 100.0),
  row_dir=_ROW_DIR,
  col_dir=_COL_DIR,
)


def _series(tmp_path, num_slices=6, **kwargs):
  rng = np.random.default_rng(1)
  hu = rng.integers(-1000, 1000, (5, 4, num_slices)).astype(np.float64)
  # Names that do not sort in slice order.
  names = [f"{n}.dcm" for n in rng.permutation(100)[:num_slices]]
  files = dummy_data.write_dicom_series(
    tmp_path / "series", hu, names=names, **_GEOMETRY, **kwargs
  )
  return hu, files


def test_dicom_series_shape_spacing_order_rescale_affine(tmp_path):
  hu, files = _series(tmp_path, slope=2.0, intercept=-1024.0)
  assert sorted(files) != files  # File names do not give the order.
  volume = medical_io.read(tmp_path / "series", case_id="c")
  assert volume.spatial_dims == 3
  assert volume.data.shape == (5, 4, 6)  # [columns, rows, slices]
  np.testing.assert_allclose(volume.spacing, (0.6, 0.7, 3.0), rtol=1e-6)
  # Stored as round((hu + 1024) / 2); read back through the rescale.
  expected = np.round((hu + 1024.0) / 2.0) * 2.0 - 1024.0
  np.testing.assert_array_equal(volume.data, expected)
  # Voxel (0, 0, 0) sits at the first slice's ImagePositionPatient, in RAS.
  first = pydicom_position(files[0])
  np.testing.assert_allclose(
    volume.affine[:3, 3], (-first[0], -first[1], first[2]), atol=1e-6
  )
  np.testing.assert_allclose(
    volume.affine, dummy_data.dicom_affine(**_GEOMETRY), atol=1e-6
  )


def pydicom_position(path):
  import pydicom  # noqa: PLC0415

  return [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]


def test_dicom_reversed_slice_normal(tmp_path):
  # Slices written with positions going down (towards feet) are reversed.
  rng = np.random.default_rng(2)
  hu = rng.integers(-100, 100, (3, 3, 4)).astype(np.float64)
  dummy_data.write_dicom_series(
    tmp_path / "s",
    hu,
    row_dir=(1, 0, 0),
    col_dir=(0, -1, 0),  # Normal points inferior.
    origin_lps=(0.0, 0.0, 0.0),
  )
  volume = medical_io.read(tmp_path / "s", case_id="c")
  np.testing.assert_array_equal(volume.data, hu)
  assert nibabel.orientations.aff2axcodes(volume.affine) == ("L", "A", "I")


@pytest.mark.parametrize(("removed", "missing"), [([2], 1), ([2, 3], 2)])
def test_dicom_missing_slices_name_the_gap(tmp_path, removed, missing):
  _, files = _series(tmp_path, num_slices=7)
  for index in removed:
    files[index].unlink()
  with pytest.raises(
    checks.InvalidExampleError, match="missing slices"
  ) as info:
    medical_io.read(tmp_path / "series", case_id="c")
  text = str(info.value)
  before, after = files[removed[0] - 1].name, files[removed[-1] + 1].name
  assert f"between {before} and {after}" in text
  assert f"about {missing} slice(s) missing" in text
  assert str(tmp_path / "series") in text


def test_dicom_series_errors(tmp_path):
  _, files = _series(tmp_path, num_slices=3)
  (tmp_path / "series" / ".hidden").write_bytes(b"x")  # Skipped.
  medical_io.read(tmp_path / "series", case_id="c")
  (tmp_path / "series" / "notes.txt").write_text("not dicom")
  with pytest.raises(checks.InvalidExampleError, match="notes.txt"):
    medical_io.read(tmp_path / "series", case_id="c")
  (tmp_path / "series" / "notes.txt").unlink()
  # A slice from another orientation (e.g. a localiser) does not fit.
  dummy_data.write_dicom_series(
    tmp_path / "other",
    np.zeros((5, 4, 1)),
    row_dir=(0, 1, 0),
    col_dir=(0, 0, -1),
    names=["loc.dcm"],
  )
  import pydicom  # noqa: PLC0415

  ds = pydicom.dcmread(tmp_path / "other" / "loc.dcm")
  ds.SeriesInstanceUID = pydicom.dcmread(files[0]).SeriesInstanceUID
  ds.save_as(tmp_path / "series" / "loc.dcm")
  with pytest.raises(checks.InvalidExampleError, match="loc.dcm"):
    medical_io.read(tmp_path / "series", case_id="c")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(checks.InvalidExampleError, match="no DICOM files"):
    medical_io.read(empty, case_id="c")


# ------------------------------------------------------------ 2-D and TIFF


def test_png_grey_and_colour(tmp_path):
  grey = _ramp((6, 9), np.uint8)
  medical_io.write_image_2d(tmp_path / "g.png", grey)
  volume = medical_io.read(tmp_path / "g.png", case_id="c")
  assert volume.spatial_dims == 2
  assert volume.shape == (6, 9)
  np.testing.assert_array_equal(volume.data, grey)
  np.testing.assert_array_equal(volume.affine, np.eye(4))

  rgba = np.stack([grey, grey + 1, grey + 2, np.full_like(grey, 7)], -1)
  Image.fromarray(rgba).save(tmp_path / "c.png")
  volume = medical_io.read(tmp_path / "c.png", case_id="c")
  assert volume.data.shape == (6, 9, 3)  # Alpha dropped.
  assert volume.shape == (6, 9)
  np.testing.assert_array_equal(volume.data[..., 1], grey + 1)

  Image.fromarray(np.stack([grey, grey], -1), "LA").save(tmp_path / "la.png")
  volume = medical_io.read(tmp_path / "la.png", case_id="c")
  np.testing.assert_array_equal(volume.data, grey)


def test_multipage_tiff_is_3d(tmp_path):
  stack = _ramp((4, 6, 5), np.uint16)
  tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
  volume = medical_io.read(tmp_path / "s.tif", case_id="c")
  assert volume.spatial_dims == 3
  assert volume.shape == (4, 6, 5)
  np.testing.assert_array_equal(volume.data, stack)

  # Pages written one by one (as Pillow and many microscopes do).
  frames = [Image.fromarray(page.astype(np.uint8)) for page in stack]
  frames[0].save(tmp_path / "p.tiff", save_all=True, append_images=frames[1:])
  volume = medical_io.read(tmp_path / "p.tiff", case_id="c")
  assert volume.spatial_dims == 3
  np.testing.assert_array_equal(volume.data, stack.astype(np.uint8))

  tifffile.imwrite(tmp_path / "one.tif", stack[0])
  volume = medical_io.read(tmp_path / "one.tif", case_id="c")
  assert volume.spatial_dims == 2
  assert volume.shape == (6, 5)


# ----------------------------------------------------------------- errors


def test_unsupported_suffix_names_the_file(tmp_path):
  path = tmp_path / "scan.xyz"
  path.write_bytes(b"1234")
  with pytest.raises(
    checks.InvalidExampleError, match="unsupported file type"
  ) as info:
    medical_io.read(path, case_id="c9")
  assert str(path) in str(info.value)
  assert ".nii.gz" in str(info.value)  # Lists what is supported.


def test_missing_file_names_the_file(tmp_path):
  path = tmp_path / "gone.nii.gz"
  with pytest.raises(checks.InvalidExampleError, match="no such file") as info:
    medical_io.read(path, case_id="c9")
  assert str(path) in str(info.value)


def test_kind_overrides_the_suffix(tmp_path):
  medical_io.write_nifti(tmp_path / "x.nii.gz", _ramp((2, 2, 2)), np.eye(4))
  renamed = tmp_path / "download_1234"
  (tmp_path / "x.nii.gz").rename(renamed)
  assert medical_io.file_kind(renamed) == ""
  volume = medical_io.read(renamed, case_id="c", kind="nifti")
  assert volume.shape == (2, 2, 2)


def test_file_kind():
  cases = {
    "a.nii": "nifti",
    "a.NII.GZ": "nifti",
    "a.mhd": "metaimage",
    "a.mha": "metaimage",
    "a.png": "image",
    "a.JPG": "image",
    "a.tiff": "tiff",
    "a.dcm": "dicom",
    "a.xyz": "",
    "a.gz": "",
  }
  for name, kind in cases.items():
    assert medical_io.file_kind(pathlib.Path("/nonexistent") / name) == kind
