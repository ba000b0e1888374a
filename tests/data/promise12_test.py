"""Tests for the `promise12` TFDS builder, on made-up MetaImage files."""

import pathlib
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from medseg_jax.data import promise12
from medseg_jax.data.promise12 import dummy_data
from tests.data import builder_testing

SHAPE = (16, 16, 5)
SPLIT_CASES = {"train": (0, 1, 20), "validation": (40,), "test": (45,)}


def _build(data_dir, manual_dir):
  return builder_testing.prepare(
    promise12.Promise12(data_dir=data_dir), manual_dir
  )


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
  tfds.disable_progress_bar()
  return dummy_data.make_dummy_data(tmp_path_factory.mktemp("promise12_raw"))


@pytest.fixture(scope="module")
def built(raw_root, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  return _build(data_dir, raw_root)


def _check_splits(builder):
  for split, cases in SPLIT_CASES.items():
    assert builder.info.splits[split].num_examples == len(cases)
    source = builder.as_data_source(split)
    assert [e["case_id"].decode() for e in source] == [
      f"Case{n:02d}" for n in cases
    ]
    for number, example in zip(cases, source, strict=True):
      raw_image, raw_label = dummy_data.make_case(number, shape=SHAPE)
      raw_affine = dummy_data.affine_of(number)
      image, label = example["image"], example["label"]
      assert image.dtype == np.float32 and image.shape == (*SHAPE, 1)
      assert label.dtype == np.uint8 and label.shape == SHAPE
      # ITK's identity direction is L->R and P->A flipped in RAS+.
      np.testing.assert_array_equal(label, raw_label[::-1, ::-1])
      assert set(np.unique(label).tolist()) == {0, 1}
      raw = raw_image[::-1, ::-1].astype(np.float64)
      np.testing.assert_allclose(
        image[..., 0], (raw - raw.mean()) / raw.std(), atol=1e-4
      )
      np.testing.assert_allclose(example["spacing"], (0.625, 0.625, 3.6))
      np.testing.assert_allclose(example["original_affine"], raw_affine)
      np.testing.assert_allclose(
        np.diag(example["affine"]), (0.625, 0.625, 3.6, 1.0)
      )
      np.testing.assert_allclose(
        example["affine"][:3, 3],
        (raw_affine @ [SHAPE[0] - 1, SHAPE[1] - 1, 0, 1])[:3],
      )
      np.testing.assert_array_equal(example["original_shape"], SHAPE)
      assert example["modality"] == b"T2"


def test_splits_and_examples(built):
  assert built.is_prepared()
  assert built.info.file_format.value == "array_record"
  # The unlabelled TestData/Case00.mhd is ignored (no duplicate, no error).
  _check_splits(built)


def _header_and_data(mhd):
  lines = mhd.read_text().splitlines()
  header = dict(line.split(" = ", 1) for line in lines)
  data = (mhd.parent / header["ElementDataFile"]).read_bytes()
  return lines, data


def _to_mha(mhd, *, compressed):
  """Rewrites `x.mhd` + `x.raw` as one `x.mha` (ElementDataFile = LOCAL)."""
  lines, data = _header_and_data(mhd)
  if compressed:
    data = zlib.compress(data)
  out = []
  for line in lines:
    if line.startswith("CompressedData ="):
      out.append(f"CompressedData = {compressed}")
      if compressed:
        out.append(f"CompressedDataSize = {len(data)}")
    elif line.startswith("ElementDataFile ="):
      out.append("ElementDataFile = LOCAL")
    else:
      out.append(line)
  mhd.with_suffix(".mha").write_bytes(("\n".join(out) + "\n").encode() + data)
  mhd.with_suffix(".raw").unlink()
  mhd.unlink()


def _to_zraw(mhd):
  """Rewrites `x.mhd` + `x.raw` as `x.mhd` + zlib-compressed `x.zraw`."""
  lines, data = _header_and_data(mhd)
  data = zlib.compress(data)
  zraw = mhd.with_suffix(".zraw")
  zraw.write_bytes(data)
  mhd.with_suffix(".raw").unlink()
  out = []
  for line in lines:
    if line.startswith("CompressedData ="):
      out += ["CompressedData = True", f"CompressedDataSize = {len(data)}"]
    elif line.startswith("ElementDataFile ="):
      out.append(f"ElementDataFile = {zraw.name}")
    else:
      out.append(line)
  mhd.write_text("\n".join(out) + "\n")


def test_mha_local_and_compressed_files(raw_root, tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(raw_root, manual)
  part1 = manual / "TrainingData_Part1"
  _to_mha(part1 / "Case00.mhd", compressed=False)
  _to_mha(part1 / "Case00_segmentation.mhd", compressed=True)
  _to_zraw(part1 / "Case01.mhd")
  _to_zraw(manual / "TrainingData_Part3" / "Case45_segmentation.mhd")
  assert (part1 / "Case00.mha").exists() and (part1 / "Case01.zraw").exists()
  builder = _build(tmp_path / "tfds", manual)
  _check_splits(builder)


def test_flat_folder(raw_root, tmp_path, monkeypatch):
  manual = tmp_path / "manual"
  manual.mkdir()
  for file in raw_root.glob("TrainingData_Part*/*"):
    shutil.copy(file, manual / file.name)
  builder = _build(tmp_path / "tfds", manual)
  assert builder.info.splits["train"].num_examples == 3
  # Building again is a no-op: nothing is generated.
  builder_testing.forbid_generation(monkeypatch, promise12.Promise12)
  _check_splits(_build(tmp_path / "tfds", manual))


def test_metadata():
  info = promise12.Promise12(data_dir="/nonexistent").info
  assert "Litjens" in info.citation and "PROMISE12" in info.citation
  assert "grand-challenge" in info.redistribution_info.license
  assert info.metadata["class_names"] == ("background", "prostate")
  assert info.metadata["channel_names"] == ("T2",)
  assert "promise12.grand-challenge.org" in (
    promise12.MANUAL_DOWNLOAD_INSTRUCTIONS
  )
  spec = promise12.DATASET_SPECS["promise12"]
  assert spec.needs_manual_dir and spec.num_classes == 2
  assert spec.splits == ("train", "validation", "test")
  assert sum(len(r) for r in promise12.SPLIT_CASES.values()) == 50


def test_missing_manual_dir_shows_instructions(tmp_path):
  with pytest.raises(AssertionError, match="grand-challenge"):
    _build(tmp_path / "tfds", tmp_path / "absent")


def test_empty_folder_shows_instructions(tmp_path):
  (tmp_path / "manual" / "TestData").mkdir(parents=True)
  dummy_data.make_dummy_data(tmp_path / "only_test", cases=())
  with pytest.raises(FileNotFoundError, match="TrainingData_Part1"):
    _build(tmp_path / "tfds", tmp_path / "only_test")


def _truncate_raw(manual):
  raw = manual / "TrainingData_Part3" / "Case40.raw"  # Validation split.
  raw.write_bytes(raw.read_bytes()[:-10])
  return "Case40", manual / "TrainingData_Part3" / "Case40.mhd", "truncated"


def _delete_segmentation(manual):
  folder = manual / "TrainingData_Part1"
  (folder / "Case01_segmentation.mhd").unlink()
  (folder / "Case01_segmentation.raw").unlink()
  return "Case01", folder / "Case01_segmentation.mhd", "no segmentation"


def _unknown_element_type(manual):
  mhd = manual / "TrainingData_Part2" / "Case20_segmentation.mhd"
  mhd.write_text(
    mhd.read_text().replace("ElementType = MET_UCHAR", "ElementType = MET_BIT")
  )
  return "Case20", mhd, "unknown 'MET_BIT'"


def _duplicate_case(manual):
  copy = manual / "extra" / "Case20.mhd"
  copy.parent.mkdir()
  shutil.copy(manual / "TrainingData_Part2" / "Case20.mhd", copy)
  return "Case20", copy, "two files for one case"


@pytest.mark.parametrize(
  "damage",
  [_truncate_raw, _delete_segmentation, _unknown_element_type, _duplicate_case],
  ids=["truncated_raw", "no_segmentation", "element_type", "duplicate"],
)
def test_bad_input_aborts_build_and_leaves_nothing(raw_root, tmp_path, damage):
  manual = tmp_path / "manual"
  shutil.copytree(raw_root, manual)
  case_id, path, match = damage(manual)
  builder_testing.assert_build_fails(
    promise12.Promise12(data_dir=tmp_path / "tfds"),
    manual,
    match=match,
    mentions=(case_id, path),
  )


@pytest.mark.slow
def test_dummy_data_script(tmp_path):
  subprocess.run(
    [
      sys.executable,
      "-m",
      "medseg_jax.data.promise12.dummy_data",
      "--out",
      str(tmp_path),
    ],
    check=True,
    cwd=pathlib.Path(__file__).resolve().parents[2],
    capture_output=True,
  )
  header = (tmp_path / "TrainingData_Part1" / "Case00.mhd").read_text()
  assert "ElementDataFile = Case00.raw" in header
  assert "ElementType = MET_SHORT" in header
  raw = tmp_path / "TrainingData_Part1" / "Case00_segmentation.raw"
  assert raw.stat().st_size == np.prod(SHAPE)  # One byte per voxel.
  assert (tmp_path / "TestData" / "Case00.mhd").exists()
  assert not (tmp_path / "TestData" / "Case00_segmentation.mhd").exists()
