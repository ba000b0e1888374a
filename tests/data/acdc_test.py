"""Tests for the `acdc` TFDS builder, on made-up data in the raw layout."""

import pathlib
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

from medseg_jax.data import acdc
from medseg_jax.data import medical_io
from medseg_jax.data import preprocessing
from medseg_jax.data.acdc import dummy_data
from tests.data import builder_testing

SHAPE = (16, 14, 3)
# Patients written by default: 1 and 2 (train), 81 (validation), 101 (test).
SPLIT_PATIENTS = {"train": (1, 2), "validation": (81,), "test": (101,)}


def _build(data_dir, manual_dir, config="native"):
  return builder_testing.prepare(
    acdc.Acdc(data_dir=data_dir, config=config), manual_dir
  )


def _load(path):
  return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
  tfds.disable_progress_bar()
  return dummy_data.make_dummy_data(tmp_path_factory.mktemp("acdc_raw"))


@pytest.fixture(scope="module")
def built(raw_root, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  return _build(data_dir, raw_root), data_dir


def _frames_on_disk(root, patient):
  folder = "training" if patient <= 100 else "testing"
  folder = root / "database" / folder / f"patient{patient:03d}"
  info = dict(
    line.split(": ")
    for line in (folder / "Info.cfg").read_text().split("\n")
    if line
  )
  return folder, info


def test_splits_and_examples(built, raw_root):
  builder, _ = built
  assert builder.is_prepared()
  assert builder.info.file_format.value == "array_record"
  for split, patients in SPLIT_PATIENTS.items():
    assert builder.info.splits[split].num_examples == 2 * len(patients)
    source = builder.as_data_source(split)
    examples = {e["case_id"].decode(): e for e in source}
    expected = {f"patient{p:03d}_{ph}" for p in patients for ph in ("ED", "ES")}
    assert set(examples) == expected
    for patient in patients:
      folder, info = _frames_on_disk(raw_root, patient)
      raw_affine = dummy_data.affine_of(patient)
      for phase in ("ED", "ES"):
        example = examples[f"patient{patient:03d}_{phase}"]
        stem = folder / f"patient{patient:03d}_frame{int(info[phase]):02d}"
        image, label = example["image"], example["label"]
        assert image.dtype == np.float32 and image.shape == (*SHAPE, 1)
        assert label.dtype == np.uint8 and label.shape == SHAPE
        # The dummy x axis runs right-to-left: stored flipped to RAS+.
        np.testing.assert_array_equal(label, _load(f"{stem}_gt.nii.gz")[::-1])
        assert set(np.unique(label).tolist()) == {0, 1, 2, 3}
        raw = _load(f"{stem}.nii.gz")[::-1].astype(np.float64)
        expected_image = (raw - raw.mean()) / raw.std()  # All voxels > 0.
        np.testing.assert_allclose(image[..., 0], expected_image, atol=1e-4)
        # Native, anisotropic spacing (5 or 10 mm slices).
        spacing = np.abs(np.diag(raw_affine)[:3])
        np.testing.assert_allclose(example["spacing"], spacing, rtol=1e-6)
        assert example["spacing"].dtype == np.float32
        np.testing.assert_allclose(example["original_affine"], raw_affine)
        assert example["affine"][0, 0] == pytest.approx(1.5625)
        # The stored first voxel is the raw last one along x.
        np.testing.assert_allclose(
          example["affine"][:3, 3],
          (raw_affine @ [SHAPE[0] - 1, 0, 0, 1])[:3],
        )
        np.testing.assert_array_equal(example["original_shape"], SHAPE)
        assert example["modality"] == b"cine_MRI"
        assert example["phase"] == phase.encode()
        assert example["group"] == info["Group"].encode()
        assert info["Group"] in acdc.acdc.GROUPS


def test_prediction_maps_back_to_source_grid(built, raw_root):
  builder, _ = built
  example = builder.as_data_source("validation")[0]
  back = preprocessing.to_original_grid(
    example["label"],
    example["affine"],
    example["original_affine"],
    example["original_shape"],
  )
  folder, info = _frames_on_disk(raw_root, 81)
  np.testing.assert_array_equal(
    back, _load(folder / f"patient081_frame{int(info['ED']):02d}_gt.nii.gz")
  )


def test_manual_dir_may_be_the_database_folder(raw_root, tmp_path, monkeypatch):
  builder = _build(tmp_path, raw_root / "database")
  assert builder.info.splits["test"].num_examples == 2
  # Building again is a no-op: nothing is generated.
  builder_testing.forbid_generation(monkeypatch, acdc.Acdc)
  again = _build(tmp_path, raw_root / "database")
  assert again.info.splits["test"].num_examples == 2


def test_resampling_config(raw_root, tmp_path):
  config = acdc.AcdcConfig(name="spacing_3_3_10", spacing=(3.125, 3.125, 10.0))
  builder = _build(tmp_path, raw_root, config=config)
  source = builder.as_data_source("train")
  by_id = {e["case_id"]: e for e in source}
  example = by_id[b"patient001_ED"]  # 10 mm slices stay.
  assert example["label"].shape == (8, 7, 3)
  assert example["image"].shape == (8, 7, 3, 1)
  np.testing.assert_allclose(example["spacing"], (3.125, 3.125, 10.0))
  np.testing.assert_array_equal(example["original_shape"], SHAPE)
  # 3 slices 5 mm apart: 2 slices over the same 15 mm extent.
  example = by_id[b"patient002_ED"]
  assert example["label"].shape == (8, 7, 2)
  np.testing.assert_allclose(example["spacing"], (3.125, 3.125, 7.5))
  assert set(np.unique(example["label"]).tolist()) <= {0, 1, 2, 3}


def test_metadata():
  builder = acdc.Acdc(data_dir="/nonexistent")
  info = builder.info
  assert "Bernard" in info.citation and "2514" in info.citation
  assert "non-commercial" in info.redistribution_info.license.lower()
  assert info.metadata["class_names"] == (
    "background",
    "right_ventricle",
    "myocardium",
    "left_ventricle",
  )
  assert info.metadata["channel_names"] == ("cine_MRI",)
  assert set(info.features) >= {"image", "label", "group", "phase", "affine"}
  assert "humanheart-project.creatis" in acdc.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert acdc.DATASET_SPECS["acdc"].needs_manual_dir
  assert acdc.DATASET_SPECS["acdc"].splits == ("train", "validation", "test")


def test_missing_manual_dir_shows_instructions(tmp_path):
  with pytest.raises(AssertionError, match="humanheart-project"):
    _build(tmp_path / "tfds", tmp_path / "absent")


def test_wrong_folder_shows_instructions(tmp_path):
  (tmp_path / "manual" / "something").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="training/"):
    _build(tmp_path / "tfds", tmp_path / "manual")


def _training(manual, patient):
  return manual / "database" / "training" / f"patient{patient:03d}"


def _delete_info(manual):
  path = _training(manual, 2) / "Info.cfg"
  path.unlink()
  return path, "no Info.cfg"


def _info_without_es(manual):
  path = _training(manual, 81) / "Info.cfg"
  lines = path.read_text().splitlines()
  path.write_text("\n".join(x for x in lines if not x.startswith("ES")))
  return path, "no `ES:` entry"


def _delete_gt(manual):
  folder = manual / "database" / "testing" / "patient101"
  path = folder / "patient101_frame01_gt.nii.gz"
  path.unlink()
  return path, "no ground-truth file"


def _gt_of_other_shape(manual):
  path = _training(manual, 1) / "patient001_frame01_gt.nii.gz"
  medical_io.write_nifti(
    path, np.zeros((16, 14, 4), np.uint8), dummy_data.affine_of(1)
  )
  return path, "grid shapes differ"


def _gt_of_other_spacing(manual):
  # Patient 81 (validation) is built after the train split was written.
  path = _training(manual, 81) / "patient081_frame01_gt.nii.gz"
  label = _load(path)
  medical_io.write_nifti(path, label, dummy_data.affine_of(2))  # 5 mm.
  return path, "grids differ in orientation, spacing or origin"


@pytest.mark.parametrize(
  "damage",
  [
    _delete_info,
    _info_without_es,
    _delete_gt,
    _gt_of_other_shape,
    _gt_of_other_spacing,
  ],
  ids=["no_info", "info_without_es", "no_gt", "grid_shape", "grid_spacing"],
)
def test_bad_input_aborts_build_and_leaves_nothing(raw_root, tmp_path, damage):
  manual = tmp_path / "manual"
  shutil.copytree(raw_root, manual)
  path, match = damage(manual)
  builder_testing.assert_build_fails(
    acdc.Acdc(data_dir=tmp_path / "tfds"),
    manual,
    match=match,
    mentions=(path, "patient"),
  )


@pytest.mark.slow
def test_dummy_data_script(tmp_path):
  subprocess.run(
    [
      sys.executable,
      "-m",
      "medseg_jax.data.acdc.dummy_data",
      "--out",
      str(tmp_path),
    ],
    check=True,
    cwd=pathlib.Path(__file__).resolve().parents[2],
    capture_output=True,
  )
  folder = tmp_path / "database" / "training" / "patient001"
  assert (folder / "Info.cfg").read_text().startswith("ED: 1\nES: ")
  four_d = _load(folder / "patient001_4d.nii.gz")
  assert four_d.shape == (*SHAPE, 4)
  np.testing.assert_array_equal(
    four_d[..., 0], _load(folder / "patient001_frame01.nii.gz")
  )
