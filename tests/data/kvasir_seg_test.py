"""Tests for the `kvasir_seg` TFDS builder, on generated dummy data."""

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from medseg_jax.data import kvasir_seg
from medseg_jax.data.kvasir_seg import dummy_data
from tests.data import builder_testing

NUM_CASES = 10  # 8 train, 1 validation, 1 test.


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
  tfds.disable_progress_bar()
  return dummy_data.make_dummy_data(
    tmp_path_factory.mktemp("kvasir_raw"), num_cases=NUM_CASES
  )


def _prepare(data_dir, manual_dir=None):
  return builder_testing.prepare(
    kvasir_seg.KvasirSeg(data_dir=data_dir), manual_dir
  )


def _expected(release, name):
  image = np.asarray(Image.open(release / "images" / f"{name}.jpg"))
  mask = np.asarray(Image.open(release / "masks" / f"{name}.jpg"))
  return image.astype(np.float32) / 255, (mask[..., 0] >= 128).astype(np.uint8)


def _check_built(builder, raw_root):
  assert builder.is_prepared()
  assert builder.info.file_format.value == "array_record"
  sizes = {
    name: split.num_examples for name, split in builder.info.splits.items()
  }
  assert sizes == {"train": 8, "validation": 1, "test": 1}
  release = raw_root / "Kvasir-SEG"
  names = sorted(p.stem for p in (release / "images").glob("*.jpg"))
  order = {"train": names[:8], "validation": names[8:9], "test": names[9:]}
  shapes = set()
  for split, expected_names in order.items():
    source = builder.as_data_source(split)
    got = [source[i]["case_id"].decode() for i in range(len(source))]
    assert got == expected_names
    for example in source:
      name = example["case_id"].decode()
      image, label = _expected(release, name)
      assert example["image"].dtype == np.float32
      assert example["image"].shape == image.shape
      np.testing.assert_allclose(example["image"], image, atol=1e-6)
      assert example["label"].dtype == np.uint8
      np.testing.assert_array_equal(example["label"], label)
      assert set(np.unique(example["label"]).tolist()) == {0, 1}
      np.testing.assert_array_equal(example["spacing"], (1.0, 1.0))
      np.testing.assert_array_equal(example["affine"], np.eye(4))
      np.testing.assert_array_equal(example["original_affine"], np.eye(4))
      np.testing.assert_array_equal(example["original_shape"], label.shape)
      assert example["modality"] == b"R+G+B"
      shapes.add(label.shape)
  assert len(shapes) > 1  # Native sizes, which differ between cases.


def test_build_from_manual_dir(raw_root, tmp_path, monkeypatch):
  builder = _prepare(tmp_path / "tfds", raw_root)
  _check_built(builder, raw_root)
  # A second prepare is a no-op: nothing is generated.
  builder_testing.forbid_generation(monkeypatch, kvasir_seg.KvasirSeg)
  _check_built(_prepare(tmp_path / "tfds", raw_root), raw_root)


def test_build_from_zip_in_manual_dir(raw_root, tmp_path):
  zipped = dummy_data.make_dummy_data(
    tmp_path / "zipped", num_cases=NUM_CASES, archive=True
  )
  assert (zipped / "kvasir-seg.zip").is_file()
  assert not (zipped / "Kvasir-SEG").exists()
  builder = _prepare(tmp_path / "tfds", zipped)
  # Same seed, so the same cases as `raw_root`.
  _check_built(builder, raw_root)


def test_download_path_uses_the_release_url(raw_root, tmp_path, monkeypatch):
  requested = []

  def fake_download_and_extract(self, url):
    del self
    requested.append(url)
    return raw_root

  monkeypatch.setattr(
    tfds.download.DownloadManager,
    "download_and_extract",
    fake_download_and_extract,
  )
  builder = _prepare(tmp_path / "tfds")
  assert requested == ["https://datasets.simula.no/downloads/kvasir-seg.zip"]
  _check_built(builder, raw_root)


def test_metadata_and_spec():
  builder = kvasir_seg.KvasirSeg(data_dir="/nonexistent")
  info = builder.info
  assert "Jha" in info.citation and "Kvasir-SEG" in info.citation
  assert "research and educational" in info.redistribution_info.license
  assert "pixel units" in info.description
  assert info.metadata["class_names"] == ("background", "polyp")
  assert info.metadata["channel_names"] == ("R", "G", "B")
  spec = kvasir_seg.DATASET_SPECS["kvasir_seg"]
  assert spec.tfds_name == "kvasir_seg" and spec.num_channels == 3
  assert kvasir_seg.BUILDER is kvasir_seg.KvasirSeg


def test_split_sizes_of_the_full_release():
  cases = [
    kvasir_seg.kvasir_seg.medical_builder.Case(f"{i:04d}", ("x.jpg",), "y")
    for i in range(1000)
  ]
  splits = kvasir_seg.split_cases(list(reversed(cases)))
  assert [len(splits[s]) for s in ("train", "validation", "test")] == [
    800,
    100,
    100,
  ]
  assert splits["validation"][0].case_id == "0800"


def _truncate_image(release, name):
  path = release / "images" / f"{name}.jpg"
  path.write_bytes(path.read_bytes()[:300])
  return path


def _wrong_size_mask(release, name):
  path = release / "masks" / f"{name}.jpg"
  Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(path)
  return path


def _missing_mask(release, name):
  path = release / "masks" / f"{name}.jpg"
  path.unlink()
  return release / "images" / f"{name}.jpg"


@pytest.mark.parametrize(
  "damage, match",
  [
    (_truncate_image, "unreadable or corrupt"),
    (_wrong_size_mask, "grid shapes differ"),
    (_missing_mask, "no label file"),
  ],
  ids=["truncated_jpeg", "mask_size", "missing_mask"],
)
def test_bad_input_aborts_and_leaves_nothing(raw_root, tmp_path, damage, match):
  manual = tmp_path / "manual"
  shutil.copytree(raw_root, manual)
  release = manual / "Kvasir-SEG"
  # The last case in sorted order: the test split, written last.
  name = sorted(p.stem for p in (release / "images").glob("*.jpg"))[-1]
  path = damage(release, name)
  builder_testing.assert_build_fails(
    kvasir_seg.KvasirSeg(data_dir=tmp_path / "tfds"),
    manual,
    match=match,
    mentions=(name, path),
  )
