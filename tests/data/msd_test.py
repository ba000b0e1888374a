"""Tests for the `msd` (Medical Segmentation Decathlon) TFDS builder.

Every build reads fake task folders written by `msd.dummy_data` into
`tmp_path` (never the real data), through a manual dir or a stubbed
download.
"""

import json
import shutil
import tarfile

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import medical_builder
from medseg_jax.data import medical_io
from medseg_jax.data import msd as msd_package
from medseg_jax.data import preprocessing
from medseg_jax.data.msd import dummy_data
from medseg_jax.data.msd import msd
from tests.data import builder_testing

URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/{}.tar"
NUM_CASES = 5
# Natural order 002 003 010 014 027: test takes the middle case, validation
# the middle one of the rest.
SPLIT_NUMBERS = {"train": (2, 3, 27), "validation": (14,), "test": (10,)}


def _build(data_dir, config, manual_dir=None):
  return builder_testing.prepare(
    msd.Msd(data_dir=data_dir, config=config), manual_dir
  )


def _canonical(path):
  """The file's voxels and affine in RAS+ order, by nibabel."""
  img = nib.as_closest_canonical(nib.load(path))
  return np.asarray(img.dataobj), img.affine


@pytest.fixture(scope="module", autouse=True)
def _quiet():
  tfds.disable_progress_bar()


def _check_common(builder, task, channels):
  config = msd.CONFIGS[task]
  info = builder.info
  assert info.file_format.value == "array_record"
  assert {s: info.splits[s].num_examples for s in msd.SPLITS} == {
    s: len(n) for s, n in SPLIT_NUMBERS.items()
  }
  assert info.metadata["class_names"] == config.class_names
  assert info.metadata["channel_names"] == channels
  assert info.metadata["task"] == config.folder
  for split, numbers in SPLIT_NUMBERS.items():
    source = builder.as_data_source(split)
    ids = [example["case_id"].decode() for example in source]
    assert ids == [dummy_data.file_name(task, n)[:-7] for n in numbers]


def test_hippocampus_one_channel(tmp_path):
  task = "task04_hippocampus"
  task_dir = dummy_data.make_dummy_data(tmp_path / "manual", task, NUM_CASES)
  builder = _build(tmp_path / "tfds", task, tmp_path / "manual")
  _check_common(builder, task, ("MRI",))
  assert builder.is_prepared()

  # Readable by name, without the builder object, as the registry does.
  source = tfds.data_source(
    "msd/task04_hippocampus", split="validation", data_dir=tmp_path / "tfds"
  )
  example = source[0]
  name = dummy_data.file_name(task, 14)
  image, affine = _canonical(task_dir / "imagesTr" / name)
  label, _ = _canonical(task_dir / "labelsTr" / name)
  assert example["case_id"] == name[:-7].encode()
  assert example["modality"] == b"MRI"
  assert example["image"].dtype == np.float32
  assert example["image"].shape == (*dummy_data.SHAPE, 1)
  np.testing.assert_allclose(
    example["image"][..., 0], preprocessing.normalize(image, "mri"), atol=1e-5
  )
  assert example["label"].dtype == np.uint8
  np.testing.assert_array_equal(example["label"], label)
  assert set(np.unique(example["label"]).tolist()) == {0, 1, 2}
  assert example["spacing"].dtype == np.float32
  np.testing.assert_allclose(example["spacing"], (1.0, 1.0, 1.0))
  np.testing.assert_allclose(example["affine"], affine)
  assert np.all(np.diag(example["affine"])[:3] > 0)  # RAS+.
  np.testing.assert_allclose(
    example["original_affine"], dummy_data.affine_of(task)
  )
  np.testing.assert_array_equal(example["original_shape"], dummy_data.SHAPE)


def test_brain_tumour_four_channels_cropped(tmp_path):
  task = "task01_braintumour"
  task_dir = dummy_data.make_dummy_data(tmp_path / "manual", task, NUM_CASES)
  builder = _build(tmp_path / "tfds", task, tmp_path / "manual")
  channels = ("FLAIR", "T1w", "t1gd", "T2w")
  _check_common(builder, task, channels)

  example = builder.as_data_source("train")[0]
  name = dummy_data.file_name(task, 2)
  raw = nib.load(task_dir / "imagesTr" / name)
  assert raw.shape == (*dummy_data.SHAPE, 4)  # 4-D NIfTI, modality last.
  assert example["modality"] == "+".join(channels).encode()
  image = example["image"]
  # The brain's box (6 x 6 x 4 voxels) plus a 2-voxel margin, within the grid.
  assert image.shape == (10, 10, 8, 4)
  assert example["label"].shape == (10, 10, 8)
  brain = np.any(image != 0, axis=-1)
  assert brain.sum() == 6 * 6 * 4
  for c in range(4):  # Each channel z-scored inside the brain.
    assert abs(image[..., c][brain].mean()) < 1e-4
    assert image[..., c][brain].std() == pytest.approx(1.0, abs=1e-4)
  assert set(np.unique(example["label"]).tolist()) == {0, 1, 2, 3}
  # The stored grid maps back onto the source file exactly.
  label = np.asarray(nib.load(task_dir / "labelsTr" / name).dataobj)
  back = preprocessing.to_original_grid(
    example["label"],
    example["affine"],
    example["original_affine"],
    example["original_shape"],
  )
  np.testing.assert_array_equal(back, label)


def test_download_is_used_without_manual_dir(tmp_path, monkeypatch):
  task = "task09_spleen"
  extracted = tmp_path / "extracted"
  task_dir = dummy_data.make_dummy_data(extracted, task, NUM_CASES)
  urls = []

  def fake_download_and_extract(self, url):
    urls.append(url)
    return extracted

  monkeypatch.setattr(
    tfds.download.DownloadManager,
    "download_and_extract",
    fake_download_and_extract,
  )
  builder = _build(tmp_path / "tfds", task)
  assert urls == [URL.format("Task09_Spleen")]
  _check_common(builder, task, ("CT",))

  example = builder.as_data_source("test")[0]
  name = dummy_data.file_name(task, 10)
  assert example["case_id"] == b"spleen_10"
  image, _ = _canonical(task_dir / "imagesTr" / name)
  expected = preprocessing.normalize(image, "ct", window=(-160.0, 240.0))
  np.testing.assert_allclose(example["image"][..., 0], expected, atol=1e-5)
  assert example["image"].max() < 5  # Bone clipped to the window.
  np.testing.assert_allclose(example["spacing"], (0.79, 0.79, 5.0), rtol=1e-6)


def test_manual_dir_with_the_tar_archive(tmp_path):
  task = "task02_heart"
  dummy_data.make_dummy_data(tmp_path / "raw", task, NUM_CASES)
  (tmp_path / "manual").mkdir()
  with tarfile.open(tmp_path / "manual" / "Task02_Heart.tar", "w") as tar:
    tar.add(tmp_path / "raw" / "Task02_Heart", arcname="Task02_Heart")
  builder = _build(tmp_path / "tfds", task, tmp_path / "manual")
  _check_common(builder, task, ("MRI",))


@pytest.mark.parametrize("task", list(msd.CONFIGS))
def test_dummy_data_agrees_with_each_config(tmp_path, task):
  task_dir = dummy_data.make_dummy_data(tmp_path, task, 3)
  config = msd.CONFIGS[task]
  meta = msd.read_dataset_json(task_dir, config)
  assert meta["numTraining"] == 3
  cases = msd.find_cases(task_dir)
  assert len(cases) == 3  # The "._" files are skipped.
  assert all(not c.case_id.startswith("._") for c in cases)
  # The first case's image reads with one channel per modality.
  volume = medical_io.read(cases[0].images[0], case_id=cases[0].case_id)
  assert volume.spatial_dims == 3
  channels = 1 if volume.data.ndim == 3 else volume.data.shape[-1]
  assert channels == len(config.channel_names)


def test_split_cases():
  def cases(n):
    return [
      medical_builder.Case(f"liver_{i}", (f"liver_{i}.nii.gz",), None)
      for i in range(n)
    ]

  assert msd.split_sizes(260) == {"train": 182, "validation": 26, "test": 52}
  assert msd.split_sizes(3) == {"train": 1, "validation": 1, "test": 1}
  with pytest.raises(ValueError, match="at least 3"):
    msd.split_sizes(2)
  for n in (3, 4, 7, 20, 131):
    splits = msd.split_cases(cases(n)[::-1])  # Input order does not matter.
    ids = [c.case_id for s in msd.SPLITS for c in splits[s]]
    assert sorted(ids) == sorted(c.case_id for c in cases(n))
    assert {s: len(splits[s]) for s in msd.SPLITS} == msd.split_sizes(n)
  # Natural order (liver_2 before liver_10); held-out cases spread out.
  splits = msd.split_cases(cases(20))
  assert [c.case_id for c in splits["test"]] == [
    "liver_2",
    "liver_7",
    "liver_12",
    "liver_17",
  ]
  assert [c.case_id for c in splits["validation"]] == ["liver_5", "liver_15"]


def test_dataset_specs_and_metadata():
  specs = msd_package.DATASET_SPECS
  assert sorted(specs) == sorted(f"msd/{name}" for name in msd.CONFIGS)
  assert len(specs) == 10
  assert msd_package.BUILDER is msd.Msd
  brats = specs["msd/task01_braintumour"]
  assert brats.tfds_name == "msd/task01_braintumour"
  assert brats.num_channels == 4 and brats.num_classes == 4
  assert specs["msd/task05_prostate"].num_channels == 2
  assert specs["msd/task10_colon"].class_names == (
    "background",
    "colon cancer primaries",
  )
  for spec in specs.values():
    assert spec.spatial_dims == 3
    assert spec.splits == ("train", "validation", "test")
    assert not spec.needs_manual_dir
  builder = tfds.builder("msd/task03_liver", data_dir="/nonexistent")
  assert "Antonelli" in builder.info.citation
  assert "CC-BY-SA 4.0" in builder.info.redistribution_info.license
  assert "imagesTs" in builder.info.description
  assert "92 train / 13 validation / 26 test" in (
    builder.builder_config.description
  )
  assert msd.CONFIGS["task03_liver"].normalization == "ct"
  assert msd.CONFIGS["task02_heart"].normalization == "mri"


# ------------------------------------------------------------- bad input


def _relabel(task_dir):
  path = task_dir / "dataset.json"
  meta = json.loads(path.read_text())
  meta["labels"]["2"] = "Tail"
  path.write_text(json.dumps(meta))
  return path, r"'labels' is .*Tail.* expects .*Posterior"


def _wrong_modality(task_dir):
  path = task_dir / "dataset.json"
  meta = json.loads(path.read_text())
  meta["modality"] = {"0": "CT"}
  path.write_text(json.dumps(meta))
  return path, "'modality' is"


def _shrink_label(task_dir):
  name = dummy_data.file_name("task04_hippocampus", 27)
  path = task_dir / "labelsTr" / name
  medical_io.write_nifti(
    path,
    np.zeros((12, 10, 7), np.uint8),
    dummy_data.affine_of("task04_hippocampus"),
  )
  return path, r"grid shapes differ: \(12, 10, 8\) vs \(12, 10, 7\)"


def _shift_label(task_dir):
  name = dummy_data.file_name("task04_hippocampus", 14)
  path = task_dir / "labelsTr" / name
  affine = dummy_data.affine_of("task04_hippocampus")
  affine[2, 3] += 3.0
  medical_io.write_nifti(path, np.zeros(dummy_data.SHAPE, np.uint8), affine)
  return path, "grids differ in orientation, spacing or origin"


def _delete_label(task_dir):
  path = task_dir / "labelsTr" / dummy_data.file_name("task04_hippocampus", 10)
  path.unlink()
  return path, "no such file"


@pytest.mark.parametrize(
  "damage",
  [_relabel, _wrong_modality, _shrink_label, _shift_label, _delete_label],
  ids=["labels", "modality", "grid_shape", "grid_affine", "missing_label"],
)
def test_bad_input_aborts_build_and_leaves_nothing(tmp_path, damage):
  task = "task04_hippocampus"
  task_dir = dummy_data.make_dummy_data(tmp_path / "manual", task, NUM_CASES)
  path, match = damage(task_dir)
  data_dir = tmp_path / "tfds"
  builder_testing.assert_build_fails(
    msd.Msd(data_dir=data_dir, config=task),
    tmp_path / "manual",
    match=match,
    mentions=(path,),
  )

  # Fixed input builds in the same data_dir.
  shutil.rmtree(tmp_path / "manual")
  dummy_data.make_dummy_data(tmp_path / "manual", task, NUM_CASES)
  assert _build(data_dir, task, tmp_path / "manual").is_prepared()


def test_missing_dataset_json_and_empty_folder(tmp_path):
  task = "task04_hippocampus"
  task_dir = dummy_data.make_dummy_data(tmp_path, task, 3)
  (task_dir / "dataset.json").unlink()
  with pytest.raises(checks.InvalidExampleError, match="dataset.json: missing"):
    msd.read_dataset_json(task_dir, msd.CONFIGS[task])
  (task_dir / "dataset.json").write_text("{not json")
  with pytest.raises(checks.InvalidExampleError, match="not readable JSON"):
    msd.read_dataset_json(task_dir, msd.CONFIGS[task])
  for file in (task_dir / "imagesTr").iterdir():
    if not file.name.startswith("._"):
      file.unlink()
  with pytest.raises(FileNotFoundError, match="No NIfTI images"):
    msd.find_cases(task_dir)
