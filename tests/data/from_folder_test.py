"""Tests for the `from_folder` TFDS builder (bring your own data).

Every test writes tiny random folders with `dummy_data` into `tmp_path`.
"""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import medical_io
from medseg_jax.data import preprocessing
from medseg_jax.data.from_folder import dummy_data
from medseg_jax.data.from_folder import from_folder
from tests.data import builder_testing


@pytest.fixture(autouse=True)
def _quiet():
  tfds.disable_progress_bar()


def _json(folder):
  return json.loads((folder / "dataset.json").read_text())


def _write_json(folder, spec):
  (folder / "dataset.json").write_text(json.dumps(spec))


# ----------------------------------------------------------- good builds


EXPECTED = {
  # format: (splits, image shape, spacing, modality)
  "nifti": (
    {"train": 3, "validation": 1},
    (8, 7, 5, 2),
    (1.0, 1.2, 2.0),
    "T1+FLAIR",
  ),
  "png": ({"train": 3, "test": 1}, (12, 10, 3), (1.0, 1.0), "R+G+B"),
  "dicom": ({"train": 3, "validation": 1}, None, None, "CT"),
  "tiff": ({"train": 4}, (8, 7, 5, 1), (1.0, 1.0, 1.0), "EM"),
  "metaimage": ({"train": 3, "test": 1}, (8, 7, 5, 1), (0.6, 0.6, 3.0), "T2"),
}


@pytest.mark.parametrize("fmt", dummy_data.FORMATS)
def test_builds_each_format(tmp_path, fmt):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt=fmt)
  data_dir = tmp_path / "tfds"
  splits, shape, spacing, modality = EXPECTED[fmt]
  dataset = from_folder.load_dataset_json(folder)

  spec = from_folder.spec_from_folder(folder)
  assert spec.tfds_name == f"from_folder/dummy_{fmt}"
  assert spec.splits == tuple(splits)
  assert spec.num_classes == 2
  assert spec.num_channels == len(dataset.channel_names)
  assert spec.spatial_dims == dataset.spatial_dims
  assert spec.needs_manual_dir

  builder = from_folder.prepare(folder, data_dir)
  assert builder.is_prepared()
  assert builder.info.file_format.value == "array_record"
  assert builder.info.metadata["class_names"] == list(dataset.class_names)
  assert builder.info.metadata["channel_names"] == list(dataset.channel_names)
  assert {s: builder.info.splits[s].num_examples for s in splits} == splits
  assert set(builder.info.splits) == set(splits)

  if fmt == "dicom":  # Resampled from 0.8 x 0.8 x 2.5 mm to about 1x1x2.
    spacing = dataset.spacing
    in_mm = np.asarray(dummy_data.SHAPE_3D) * (0.8, 0.8, 2.5)
    shape = (*np.round(in_mm / spacing).astype(int), 1)
  ids = sorted(f"case{i:03d}" for i in range(4))
  seen = []
  for split in splits:
    # Read back by name from the files alone, as training does.
    source = tfds.data_source(
      f"from_folder/dummy_{fmt}", split=split, data_dir=data_dir
    )
    for example in source:
      seen.append(example["case_id"].decode())
      assert example["image"].dtype == np.float32
      assert example["image"].shape == shape
      assert np.isfinite(example["image"]).all()
      assert example["label"].dtype == np.uint8
      assert example["label"].shape == shape[:-1]
      assert set(np.unique(example["label"])) == {0, 1}
      assert example["modality"] == modality.encode()
      np.testing.assert_allclose(
        example["spacing"], spacing, rtol=0.1 if fmt == "dicom" else 1e-5
      )
      np.testing.assert_allclose(
        example["spacing"],
        np.linalg.norm(example["affine"][:3, : len(spacing)], axis=0),
        rtol=1e-5,
      )
      if dataset.spatial_dims == 3:  # Canonical RAS+ orientation.
        linear = example["affine"][:3, :3]
        np.testing.assert_allclose(linear, np.diag(np.diag(linear)))
        assert (np.diag(linear) > 0).all()
  assert sorted(seen) == ids


def test_nifti_values_and_original_grid(tmp_path):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt="nifti")
  builder = from_folder.prepare(folder, tmp_path / "tfds")
  example = builder.as_data_source("train")[1]
  assert example["case_id"] == b"case001"
  raw = [
    medical_io.read(folder / "images" / f"case001_000{c}.nii.gz", case_id="x")
    for c in range(2)
  ]
  label = medical_io.read(folder / "labels" / "case001.nii.gz", case_id="x")
  np.testing.assert_allclose(
    example["original_affine"], dummy_data.NIFTI_AFFINE, atol=1e-6
  )
  np.testing.assert_array_equal(example["original_shape"], (8, 7, 5))
  # The dummy affine points x left, so the stored grid is flipped along x.
  np.testing.assert_array_equal(example["label"], label.data[::-1])
  for channel, mode in enumerate(("mri", "zscore")):
    np.testing.assert_allclose(
      example["image"][..., channel],
      preprocessing.normalize(raw[channel].data[::-1], mode),
      rtol=1e-5,
      atol=1e-5,
    )
  back = preprocessing.to_original_grid(
    example["label"],
    example["affine"],
    example["original_affine"],
    example["original_shape"],
  )
  np.testing.assert_array_equal(back, label.data)


def test_png_label_map_and_minmax(tmp_path):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt="png")
  builder = from_folder.prepare(folder, tmp_path / "tfds")
  example = builder.as_data_source("test")[0]
  assert example["case_id"] == b"case003"
  raw = medical_io.read(folder / "labels" / "case003.png", case_id="x").data
  np.testing.assert_array_equal(example["label"], raw == 255)
  assert example["image"].min() == 0.0
  assert example["image"].max() == 1.0


def test_dicom_original_grid(tmp_path):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt="dicom")
  builder = from_folder.prepare(folder, tmp_path / "tfds")
  example = builder.as_data_source("validation")[0]
  np.testing.assert_allclose(
    example["original_affine"], dummy_data.dicom_affine(), atol=1e-5
  )
  np.testing.assert_array_equal(example["original_shape"], dummy_data.SHAPE_3D)


def test_second_prepare_is_a_noop(tmp_path, monkeypatch):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt="tiff")
  from_folder.prepare(folder, tmp_path / "tfds")

  def fail(*args, **kwargs):
    raise AssertionError("built again")

  monkeypatch.setattr(from_folder.FromFolder, "_split_generators", fail)
  builder = from_folder.prepare(folder, tmp_path / "tfds")
  assert builder.info.splits["train"].num_examples == 4


def test_changed_json_after_build_is_an_error(tmp_path):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt="tiff")
  from_folder.prepare(folder, tmp_path / "tfds")
  spec = _json(folder)
  spec["validation_fraction"] = 0.5
  _write_json(folder, spec)
  with pytest.raises(ValueError, match="different settings"):
    from_folder.builder_for(folder, tmp_path / "tfds")


def test_builder_needs_a_folder(tmp_path):
  with pytest.raises(ValueError, match="builder_for"):
    from_folder.FromFolder(data_dir=tmp_path)
  with pytest.raises(Exception, match="builder_for"):
    tfds.builder("from_folder/anything", data_dir=tmp_path)


def test_modality_suffix_pairs_channels(tmp_path):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt="nifti")
  cases = from_folder.find_cases(from_folder.load_dataset_json(folder))
  assert [c.case_id for c in cases] == [f"case{i:03d}" for i in range(4)]
  assert [pathlib.Path(p).name for p in cases[2].images] == [
    "case002_0000.nii.gz",
    "case002_0001.nii.gz",
  ]
  assert pathlib.Path(cases[2].label).name == "case002.nii.gz"


def test_stem_that_looks_like_a_channel_matches_its_label(tmp_path):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt="tiff")
  for kind in ("images", "labels"):
    for path in sorted((folder / kind).iterdir()):
      stem, suffix = path.name.split(".")
      path.rename(path.with_name(f"{stem}_0001.{suffix}"))
  cases = from_folder.find_cases(from_folder.load_dataset_json(folder))
  assert [c.case_id for c in cases][:1] == ["case000_0001"]
  assert len(cases[0].images) == 1


def test_channel_gap_is_an_error(tmp_path):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt="nifti")
  (folder / "images" / "case001_0001.nii.gz").rename(
    folder / "images" / "case001_0002.nii.gz"
  )
  with pytest.raises(checks.InvalidExampleError, match="_0001 missing"):
    from_folder.find_cases(from_folder.load_dataset_json(folder))


def test_label_without_image_is_an_error(tmp_path):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt="tiff")
  shutil.copy(folder / "labels" / "case000.tiff", folder / "labels" / "x.tiff")
  with pytest.raises(checks.InvalidExampleError, match="x.tiff"):
    from_folder.find_cases(from_folder.load_dataset_json(folder))


def test_hidden_files_and_raw_data_files_are_skipped(tmp_path):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt="metaimage")
  (folder / "images" / ".DS_Store").write_bytes(b"\0")
  cases = from_folder.find_cases(from_folder.load_dataset_json(folder))
  assert len(cases) == 4
  assert pathlib.Path(cases[0].label).name == "case000.mhd"


# ---------------------------------------------------------------- splits


def _dataset(tmp_path, **keys):
  spec = {
    "name": "d",
    "spatial_dims": 2,
    "channel_names": ["x"],
    "class_names": ["bg", "fg"],
    **keys,
  }
  tmp_path.mkdir(parents=True, exist_ok=True)
  _write_json(tmp_path, spec)
  return from_folder.load_dataset_json(tmp_path)


def test_fraction_split_is_by_sorted_id(tmp_path):
  dataset = _dataset(tmp_path, validation_fraction=0.2, test_fraction=0.1)
  ids = [f"c{i:02d}" for i in range(10)][::-1]
  splits = from_folder.split_case_ids(dataset, ids)
  assert splits == {
    "train": [f"c{i:02d}" for i in range(7)],
    "validation": ["c07", "c08"],
    "test": ["c09"],
  }
  small = from_folder.split_case_ids(dataset, ["a", "b", "c"])
  assert small == {"train": ["a"], "validation": ["b"], "test": ["c"]}
  with pytest.raises(checks.InvalidExampleError, match="too few"):
    from_folder.split_case_ids(dataset, ["a", "b"])


def test_no_split_keys_put_everything_in_train(tmp_path):
  dataset = _dataset(tmp_path)
  assert from_folder.split_case_ids(dataset, ["b", "a"]) == {
    "train": ["a", "b"]
  }


def test_explicit_splits(tmp_path):
  dataset = _dataset(tmp_path, splits={"train": ["b"], "validation": ["a"]})
  assert from_folder.split_case_ids(dataset, ["a", "b", "c"]) == {
    "train": ["b"],
    "validation": ["a"],
  }
  with pytest.raises(checks.InvalidExampleError, match="'zz'"):
    from_folder.split_case_ids(
      _dataset(tmp_path, splits={"train": ["zz"]}), ["a"]
    )


# ---------------------------------------------------------- dataset.json


@pytest.mark.parametrize(
  ("change", "message"),
  [
    ({"name": None}, "missing required key.*'name'"),
    ({"class_name": ["a", "b"]}, "unknown key.*'class_name'"),
    ({"spatial_dims": 4}, "'spatial_dims'"),
    ({"name": "no spaces"}, "'name'"),
    ({"channel_names": []}, "'channel_names'"),
    ({"class_names": ["only"]}, "'class_names'"),
    ({"class_names": ["a", "a"]}, "'class_names'"),
    ({"normalization": ["mri", "ct", "ct"]}, "'normalization'"),
    ({"normalization": "bogus"}, "'normalization'"),
    ({"spacing": [1.0, 1.0, 1.0]}, "'spacing'"),
    ({"spacing": [1.0, -1.0]}, "'spacing'"),
    ({"validation_fraction": 1.5}, "'validation_fraction'"),
    (
      {"validation_fraction": 0.6, "test_fraction": 0.5},
      "must be below 1",
    ),
    (
      {"splits": {"train": ["a"]}, "validation_fraction": 0.2},
      "cannot be combined",
    ),
    ({"splits": {"train": ["a"], "test": ["a"]}}, "both"),
    ({"splits": {"Train!": ["a"]}}, "split name"),
    ({"label_map": {"x": 1}}, "'label_map'"),
    ({"label_map": {"255": 2}}, "'label_map'"),
    ({"ct_window": [100, -100]}, "'ct_window'"),
    ({"image_order": 2}, "'image_order'"),
    ({"crop_foreground": "yes"}, "'crop_foreground'"),
  ],
)
def test_bad_dataset_json(tmp_path, change, message):
  spec = {
    "name": "d",
    "spatial_dims": 2,
    "channel_names": ["a", "b"],
    "class_names": ["bg", "fg"],
  }
  spec.update(change)
  spec = {k: v for k, v in spec.items() if v is not None}
  _write_json(tmp_path, spec)
  with pytest.raises(from_folder.DatasetJsonError, match=message) as info:
    from_folder.load_dataset_json(tmp_path)
  assert "dataset.json" in str(info.value)


def test_dataset_json_defaults_and_conversions(tmp_path):
  dataset = _dataset(
    tmp_path, label_map={"255": 1, "0": 0}, normalization="ct", spacing=None
  )
  assert dataset.label_map == {255: 1, 0: 0}
  assert dataset.normalization == ("ct",)
  assert dataset.spacing is None
  assert dataset.splits is None
  assert dataset.tfds_name == "from_folder/d"


def test_missing_or_invalid_dataset_json(tmp_path):
  with pytest.raises(FileNotFoundError, match="dataset.json"):
    from_folder.load_dataset_json(tmp_path)
  (tmp_path / "dataset.json").write_text("{not json")
  with pytest.raises(from_folder.DatasetJsonError, match="not valid JSON"):
    from_folder.load_dataset_json(tmp_path)


# ------------------------------------------------------------ bad inputs


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def _shape_mismatch(folder):
  medical_io.write_nifti(
    folder / "labels" / "case001.nii.gz",
    np.zeros((8, 7, 4), np.uint8),
    dummy_data.NIFTI_AFFINE,
  )
  return "case001.nii.gz"


def _affine_mismatch(folder):
  shifted = dummy_data.NIFTI_AFFINE.copy()
  shifted[:3, 3] += (0.0, 3.0, 0.0)
  medical_io.write_nifti(
    folder / "labels" / "case001.nii.gz",
    np.zeros(dummy_data.SHAPE_3D, np.uint8),
    shifted,
  )
  return "case001.nii.gz"


def _missing_label(folder):
  (folder / "labels" / "case001.nii.gz").unlink()
  return "case001_0000.nii.gz"


def _unsupported(folder):
  (folder / "images" / "case009.xyz").write_bytes(b"hello")
  return "case009.xyz"


def _truncated_gzip(folder):
  _truncate(folder / "images" / "case002_0001.nii.gz")
  return "case002_0001.nii.gz"


def _dicom_gap(folder):
  series = folder / "images" / "case001"
  files = sorted(series.iterdir())
  files[len(files) // 2].unlink()
  return "case001"


@pytest.mark.parametrize(
  ("fmt", "corrupt", "message"),
  [
    ("nifti", _shape_mismatch, "grid shapes differ"),
    ("nifti", _affine_mismatch, "grids differ"),
    ("nifti", _missing_label, "no label file"),
    ("nifti", _unsupported, "unsupported file type"),
    ("nifti", _truncated_gzip, "truncated or corrupt gzip"),
    ("dicom", _dicom_gap, "missing slices"),
  ],
)
def test_bad_input_fails_and_leaves_nothing(tmp_path, fmt, corrupt, message):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt=fmt)
  name = corrupt(folder)
  data_dir = tmp_path / "tfds"
  builder = from_folder.builder_for(folder, data_dir)
  builder_testing.assert_build_fails(
    builder, None, match=message, mentions=(name,)
  )
  # A fixed folder then builds cleanly in the same data_dir.
  shutil.rmtree(folder)
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt=fmt)
  assert from_folder.prepare(folder, data_dir).is_prepared()


def test_dicom_gap_message_names_the_neighbours(tmp_path):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt="dicom")
  _dicom_gap(folder)
  dataset = from_folder.load_dataset_json(folder)
  case = from_folder.find_cases(dataset)[1]
  with pytest.raises(checks.InvalidExampleError) as info:
    medical_io.read(case.images[0], case_id=case.case_id)
  text = str(info.value)
  assert "IM-0001-0002.dcm and IM-0001-0004.dcm" in text
  assert "about 1 slice(s) missing" in text
  assert os.fspath(folder / "images" / "case001") in text
