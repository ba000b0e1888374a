"""Tests for the `isic2018` TFDS builder, on generated dummy data."""

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from medseg_jax.data import isic2018
from medseg_jax.data import preprocessing
from medseg_jax.data.isic2018 import dummy_data
from tests.data import builder_testing

SIZES = {"train": 3, "validation": 2, "test": 2}
TRAIN_IMAGES = "ISIC2018_Task1-2_Training_Input"
TRAIN_MASKS = "ISIC2018_Task1_Training_GroundTruth"


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
  tfds.disable_progress_bar()
  return dummy_data.make_dummy_data(tmp_path_factory.mktemp("isic_raw"))


def _prepare(data_dir, config, manual_dir=None):
  return builder_testing.prepare(
    isic2018.Isic2018(data_dir=data_dir, config=config), manual_dir
  )


def _source_pair(raw_root, split, case_id):
  image_folder, mask_folder = isic2018.FOLDERS[split]
  image = np.asarray(Image.open(raw_root / image_folder / f"{case_id}.jpg"))
  mask = np.asarray(
    Image.open(raw_root / mask_folder / f"{case_id}_segmentation.png")
  )
  return image.astype(np.float32) / 255, (mask == 255).astype(np.uint8)


def _check_common(example, source_label):
  assert example["image"].dtype == np.float32
  assert example["image"].shape[-1] == 3
  assert example["image"].shape[:2] == example["label"].shape
  assert 0.0 <= example["image"].min() and example["image"].max() <= 1.0
  assert example["label"].dtype == np.uint8
  assert set(np.unique(example["label"]).tolist()) == {0, 1}
  assert example["modality"] == b"R+G+B"
  np.testing.assert_array_equal(example["original_affine"], np.eye(4))
  np.testing.assert_array_equal(example["original_shape"], source_label.shape)


def test_native_config(raw_root, tmp_path):
  builder = _prepare(tmp_path, "native", raw_root)
  assert builder.is_prepared()
  assert builder.info.file_format.value == "array_record"
  sizes = {s: info.num_examples for s, info in builder.info.splits.items()}
  assert sizes == SIZES
  for split in SIZES:
    source = tfds.data_source("isic2018/native", split=split, data_dir=tmp_path)
    for example in source:
      case_id = example["case_id"].decode()
      image, label = _source_pair(raw_root, split, case_id)
      _check_common(example, label)
      np.testing.assert_allclose(example["image"], image, atol=1e-6)
      np.testing.assert_array_equal(example["label"], label)
      np.testing.assert_array_equal(example["spacing"], (1.0, 1.0))
      np.testing.assert_array_equal(example["affine"], np.eye(4))
  first = builder.as_data_source("train")[0]
  assert first["case_id"] == b"ISIC_0000000"
  assert first["label"].shape == dummy_data.LARGE_SHAPE


def test_512_config_reduces_large_images_only(raw_root, tmp_path):
  builder = _prepare(tmp_path, "512", raw_root)
  assert builder.builder_config.max_side == 512
  train = builder.as_data_source("train")
  large = train[0]
  image, label = _source_pair(raw_root, "train", "ISIC_0000000")
  _check_common(large, label)
  assert large["label"].shape == (384, 512)
  scale = 720 / 512
  np.testing.assert_allclose(large["spacing"], (scale, scale), rtol=1e-6)
  # The stored grid maps back onto the source grid.
  back = preprocessing.to_original_grid(
    large["label"], large["affine"], large["original_affine"], label.shape
  )
  assert np.mean(back == label) > 0.99
  # Smoothly reduced colours: the lesion and skin means are kept.
  small_label = large["label"].astype(bool)
  for inside in (True, False):
    np.testing.assert_allclose(
      large["image"][small_label == inside].mean(0),
      image[label.astype(bool) == inside].mean(0),
      atol=0.02,
    )
  # Small images are stored as they are.
  for split in SIZES:
    for example in builder.as_data_source(split):
      if example["case_id"] == b"ISIC_0000000":
        continue
      source_image, source_label = _source_pair(
        raw_root, split, example["case_id"].decode()
      )
      np.testing.assert_array_equal(example["label"], source_label)
      np.testing.assert_allclose(example["image"], source_image, atol=1e-6)
      np.testing.assert_array_equal(example["spacing"], (1.0, 1.0))


def test_download_path_uses_the_challenge_urls(raw_root, tmp_path, monkeypatch):
  requested = {}

  def fake_download_and_extract(self, urls):
    del self
    requested.update(urls)
    return {name: raw_root for name in urls}

  monkeypatch.setattr(
    tfds.download.DownloadManager,
    "download_and_extract",
    fake_download_and_extract,
  )
  builder = _prepare(tmp_path, "native")
  base = "https://isic-challenge-data.s3.amazonaws.com/2018/"
  assert sorted(requested.values()) == sorted(
    base + name
    for name in (
      "ISIC2018_Task1-2_Training_Input.zip",
      "ISIC2018_Task1_Training_GroundTruth.zip",
      "ISIC2018_Task1-2_Validation_Input.zip",
      "ISIC2018_Task1_Validation_GroundTruth.zip",
      "ISIC2018_Task1-2_Test_Input.zip",
      "ISIC2018_Task1_Test_GroundTruth.zip",
    )
  )
  sizes = {s: info.num_examples for s, info in builder.info.splits.items()}
  assert sizes == SIZES


def test_zips_in_manual_dir(tmp_path):
  zipped = dummy_data.make_dummy_data(
    tmp_path / "zipped",
    num_cases={"train": 1, "validation": 1, "test": 1},
    archive=True,
  )
  assert (zipped / f"{TRAIN_IMAGES}.zip").is_file()
  builder = _prepare(tmp_path / "tfds", "native", zipped)
  sizes = {s: info.num_examples for s, info in builder.info.splits.items()}
  assert sizes == {"train": 1, "validation": 1, "test": 1}


def test_partial_manual_dir_names_what_is_missing(raw_root, tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(raw_root / TRAIN_IMAGES, manual / TRAIN_IMAGES)
  with pytest.raises(FileNotFoundError, match=TRAIN_MASKS):
    _prepare(tmp_path / "tfds", "native", manual)


def test_metadata_and_specs():
  info = isic2018.Isic2018(data_dir="/nonexistent", config="native").info
  assert "Codella" in info.citation and "Tschandl" in info.citation
  assert "CC BY-NC 4.0" in info.redistribution_info.license
  assert "pixel units" in info.description
  assert info.metadata["class_names"] == ("background", "lesion")
  assert info.metadata["channel_names"] == ("R", "G", "B")
  assert set(isic2018.DATASET_SPECS) == {"isic2018/native", "isic2018/512"}
  for name, spec in isic2018.DATASET_SPECS.items():
    assert spec.tfds_name == name
    builder = tfds.builder(name, data_dir="/nonexistent")
    assert isinstance(builder, isic2018.BUILDER)


def _truncate_image(root, case_id):
  path = root / TRAIN_IMAGES / f"{case_id}.jpg"
  path.write_bytes(path.read_bytes()[:300])
  return path


def _wrong_size_mask(root, case_id):
  path = root / TRAIN_MASKS / f"{case_id}_segmentation.png"
  Image.fromarray(np.zeros((7, 9), np.uint8)).save(path)
  return path


def _missing_mask(root, case_id):
  (root / TRAIN_MASKS / f"{case_id}_segmentation.png").unlink()
  return root / TRAIN_IMAGES / f"{case_id}.jpg"


@pytest.mark.parametrize("config", ["native", "512"])
@pytest.mark.parametrize(
  "damage, match",
  [
    (_truncate_image, "unreadable or corrupt"),
    (_wrong_size_mask, "grid shapes differ"),
    (_missing_mask, "no label file"),
  ],
  ids=["truncated_jpeg", "mask_size", "missing_mask"],
)
def test_bad_input_aborts_and_leaves_nothing(
  raw_root, tmp_path, damage, match, config
):
  manual = tmp_path / "manual"
  shutil.copytree(raw_root, manual)
  # The large case, so the `512` config's reduction path sees it.
  path = damage(manual, "ISIC_0000000")
  builder_testing.assert_build_fails(
    isic2018.Isic2018(data_dir=tmp_path / "tfds", config=config),
    manual,
    match=match,
    mentions=("ISIC_0000000", path),
  )
