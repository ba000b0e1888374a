"""Tests for the `drive` TFDS builder, on generated dummy data."""

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tifffile
from PIL import Image

from medseg_jax.data import drive
from medseg_jax.data.drive import dummy_data
from tests.data import builder_testing

# Dummy cases: training 21, 22, 37 and test 01, 02.
EXPECTED = {
  "train": ["21_training", "22_training"],
  "validation": ["37_training"],
  "test": ["01_test", "02_test"],
}


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
  tfds.disable_progress_bar()
  return dummy_data.make_dummy_data(tmp_path_factory.mktemp("drive_raw"))


def _prepare(data_dir, manual_dir):
  return builder_testing.prepare(drive.Drive(data_dir=data_dir), manual_dir)


def _raw(raw_root, case_id):
  number, name = case_id.split("_")
  folder = raw_root / "DRIVE" / name
  image = tifffile.imread(folder / "images" / f"{case_id}.tif")
  vessels = np.asarray(
    Image.open(folder / "1st_manual" / f"{number}_manual1.gif").convert("L")
  )
  fov = np.asarray(
    Image.open(folder / "mask" / f"{case_id}_mask.gif").convert("L")
  )
  return image, vessels, fov


def test_build(raw_root, tmp_path):
  builder = _prepare(tmp_path, raw_root)
  assert builder.is_prepared()
  assert builder.info.file_format.value == "array_record"
  for split, names in EXPECTED.items():
    source = tfds.data_source("drive", split=split, data_dir=tmp_path)
    assert [e["case_id"].decode() for e in source] == names
    for example in source:
      image, vessels, fov = _raw(raw_root, example["case_id"].decode())
      assert set(np.unique(vessels).tolist()) == {0, 255}  # Raw convention.
      assert example["image"].dtype == np.float32
      assert example["image"].shape == (*dummy_data.SHAPE, 3)
      np.testing.assert_allclose(example["image"], image / 255, atol=1e-6)
      assert example["label"].dtype == np.uint8
      np.testing.assert_array_equal(example["label"], vessels == 255)
      assert example["fov"].dtype == np.uint8
      np.testing.assert_array_equal(example["fov"], fov > 0)
      assert example["label"][example["fov"] == 0].max() == 0
      assert 0 < example["label"].sum() < example["fov"].sum()
      np.testing.assert_array_equal(example["spacing"], (1.0, 1.0))
      np.testing.assert_array_equal(example["affine"], np.eye(4))
      np.testing.assert_array_equal(example["original_affine"], np.eye(4))
      np.testing.assert_array_equal(example["original_shape"], dummy_data.SHAPE)
      assert example["modality"] == b"R+G+B"


def test_split_numbers():
  numbers = drive.SPLIT_NUMBERS
  assert list(numbers["train"]) == list(range(21, 37))
  assert list(numbers["validation"]) == [37, 38, 39, 40]
  assert list(numbers["test"]) == list(range(1, 21))


def test_metadata_and_spec():
  info = drive.Drive(data_dir="/nonexistent").info
  assert "Staal" in info.citation
  assert "grand-challenge" in info.redistribution_info.license
  assert "pixel units" in info.description
  assert info.metadata["class_names"] == ("background", "vessel")
  assert info.metadata["channel_names"] == ("R", "G", "B")
  assert "fov" in info.features
  spec = drive.DATASET_SPECS["drive"]
  assert spec.needs_manual_dir and spec.tfds_name == "drive"
  assert "grand-challenge" in drive.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_missing_test_annotations_are_named(raw_root, tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(raw_root, manual)
  shutil.rmtree(manual / "DRIVE" / "test" / "1st_manual")
  with pytest.raises(FileNotFoundError, match="1st_manual"):
    _prepare(tmp_path / "tfds", manual)


def _truncate_image(release):
  path = release / "test" / "images" / "02_test.tif"
  path.write_bytes(path.read_bytes()[:200])
  return path


def _wrong_size_label(release):
  path = release / "test" / "1st_manual" / "02_manual1.gif"
  Image.fromarray(np.zeros((10, 10), np.uint8)).save(path)
  return path


def _wrong_size_fov(release):
  path = release / "test" / "mask" / "02_test_mask.gif"
  Image.fromarray(np.full((10, 10), 255, np.uint8)).save(path)
  return path


def _missing_label(release):
  path = release / "test" / "1st_manual" / "02_manual1.gif"
  path.unlink()
  return path


def _missing_fov(release):
  path = release / "test" / "mask" / "02_test_mask.gif"
  path.unlink()
  return path


def _grey_label(release):
  path = release / "test" / "1st_manual" / "02_manual1.gif"
  Image.fromarray(np.full(dummy_data.SHAPE, 128, np.uint8)).save(path)
  return path


@pytest.mark.parametrize(
  "damage, match",
  [
    (_truncate_image, "not a readable TIFF"),
    (_wrong_size_label, "grid shapes differ"),
    (_wrong_size_fov, "grid shapes differ"),
    (_missing_label, "missing"),
    (_missing_fov, "missing"),
    (_grey_label, r"found \[128\]"),
  ],
  ids=[
    "truncated_tiff",
    "label_size",
    "fov_size",
    "missing_label",
    "missing_fov",
    "label_value",
  ],
)
def test_bad_input_aborts_and_leaves_nothing(raw_root, tmp_path, damage, match):
  manual = tmp_path / "manual"
  shutil.copytree(raw_root, manual)
  # The last case of the last split, so earlier splits were written first.
  path = damage(manual / "DRIVE")
  builder_testing.assert_build_fails(
    drive.Drive(data_dir=tmp_path / "tfds"),
    manual,
    match=match,
    mentions=("02_test", path),
  )
