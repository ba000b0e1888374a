"""Tests for the `lesjak_ms` builder, on generated dummy data and, when
present, on the 3-case real subset in ../shared/data."""

import pathlib

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import preprocessing
from medseg_jax.data import registry
from medseg_jax.data.lesjak_ms import dummy_data
from medseg_jax.data.lesjak_ms import lesjak_ms
from tests.data import builder_testing

REAL_DATA = (
  pathlib.Path(__file__).resolve().parents[3]
  / "shared"
  / "data"
  / "open_ms_data_lesjak2017"
)


@pytest.fixture(autouse=True)
def _quiet():
  tfds.disable_progress_bar()


@pytest.mark.parametrize("layout", ["mni", "lit"])
def test_builds_from_manual_dir(tmp_path, layout):
  raw = dummy_data.make_dummy_data(
    tmp_path / "raw", patients=(3, 7, 26), layout=layout
  )
  registry.prepare("lesjak_ms", tmp_path / "tfds", manual_dir=raw)
  train = registry.data_source("lesjak_ms", "train", tmp_path / "tfds")
  validation = registry.data_source(
    "lesjak_ms", "validation", tmp_path / "tfds"
  )
  assert [e["case_id"] for e in train] == [b"patient03", b"patient07"]
  assert [e["case_id"] for e in validation] == [b"patient26"]

  for example, number in zip(
    [train[0], train[1], validation[0]], (3, 7, 26), strict=True
  ):
    images, label = dummy_data.make_case(number)
    image = example["image"]
    assert image.dtype == np.float32 and image.shape[-1] == 4
    assert example["label"].dtype == np.uint8
    assert image.shape[:-1] == example["label"].shape
    # Cropping to the brain kept every lesion voxel.
    assert example["label"].sum() == label.sum()
    assert set(np.unique(example["label"])) <= {0, 1}
    # Reoriented to RAS+: a positive diagonal affine.
    affine = example["affine"]
    assert np.all(np.diag(affine)[:3] > 0)
    np.testing.assert_allclose(example["spacing"], [1.0, 1.0, 1.2], rtol=1e-6)
    np.testing.assert_array_equal(example["original_shape"], dummy_data.SHAPE)
    np.testing.assert_allclose(example["original_affine"], dummy_data.AFFINE)
    assert example["modality"] == b"FLAIR+T1+T1POST+T2"
    # Per-channel z-score inside the brain; background exactly 0.
    brain = np.any(image != 0, axis=-1)
    np.testing.assert_allclose(image[brain].mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(image[brain].std(0), 1.0, atol=1e-3)
    # The stored label maps back onto the source grid exactly.
    back = preprocessing.to_original_grid(
      example["label"], affine, example["original_affine"], dummy_data.SHAPE
    )
    np.testing.assert_array_equal(back, label)


def test_builds_from_download(tmp_path, monkeypatch):
  """The URL list is built and read as NIfTI even without file suffixes."""
  raw = dummy_data.make_dummy_data(tmp_path / "raw", patients=(1, 2, 21))
  seen = {}

  def fake_download(self, urls):
    seen.update(urls)
    out = {}
    for key, url in urls.items():
      patient, channel = key.split("/")
      number = int(patient[len("patient") :])
      source = raw / f"patient{min(number, 21) if number > 2 else number:02d}"
      if number not in (1, 2, 21):
        source = raw / "patient01"
      name = lesjak_ms._MNI_FILES[channel]  # noqa: SLF001
      target = tmp_path / "dl" / f"{patient}_{channel}_hash"
      target.parent.mkdir(exist_ok=True)
      target.write_bytes((source / name).read_bytes())
      assert url.startswith("https://raw.githubusercontent.com/")
      out[key] = target
    return out

  monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
  registry.prepare("lesjak_ms", tmp_path / "tfds")
  assert len(seen) == 30 * 5
  train = registry.data_source("lesjak_ms", "train", tmp_path / "tfds")
  assert len(train) == 20


def test_missing_modality_names_the_folder(tmp_path):
  raw = dummy_data.make_dummy_data(tmp_path / "raw", patients=(4,))
  next((raw / "patient04").glob("T2_*")).unlink()
  with pytest.raises(checks.InvalidExampleError, match="patient04.*no T2"):
    registry.prepare("lesjak_ms", tmp_path / "tfds", manual_dir=raw)
  builder_testing.assert_nothing_prepared(
    lesjak_ms.LesjakMs(data_dir=tmp_path / "tfds")
  )


def test_missing_label_and_grid_mismatch_are_errors(tmp_path):
  raw = dummy_data.make_dummy_data(tmp_path / "raw", patients=(4,))
  label = next((raw / "patient04").glob("GOLD_STANDARD_*"))
  label.unlink()
  with pytest.raises(checks.InvalidExampleError, match="no label"):
    registry.prepare("lesjak_ms", tmp_path / "tfds", manual_dir=raw)

  data = np.zeros((20, 24, 17), np.uint8)  # One slice short.
  nib.save(nib.Nifti1Image(data, dummy_data.AFFINE), label)
  with pytest.raises(checks.InvalidExampleError, match="shapes differ"):
    registry.prepare("lesjak_ms", tmp_path / "tfds", manual_dir=raw)
  builder_testing.assert_nothing_prepared(
    lesjak_ms.LesjakMs(data_dir=tmp_path / "tfds")
  )


def test_no_patient_folders_explains_layout(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="(?s)is empty.*patientXX"):
    registry.prepare(
      "lesjak_ms", tmp_path / "tfds", manual_dir=tmp_path / "empty"
    )
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "README.txt").write_text("no patients here")
  with pytest.raises(FileNotFoundError, match="(?s)No Lesjak MS.*patientXX"):
    registry.prepare(
      "lesjak_ms", tmp_path / "tfds", manual_dir=tmp_path / "other"
    )


@pytest.mark.slow
@pytest.mark.skipif(
  not REAL_DATA.is_dir(),
  reason=f"real Lesjak MS subset not found at {REAL_DATA}",
)
def test_real_subset(tmp_path):
  registry.prepare("lesjak_ms", tmp_path, manual_dir=REAL_DATA)
  train = registry.data_source("lesjak_ms", "train", tmp_path)
  validation = registry.data_source("lesjak_ms", "validation", tmp_path)
  lesions = {}
  for example in [*train, *validation]:
    assert example["image"].shape[-1] == 4
    assert example["image"].shape[:-1] == example["label"].shape
    np.testing.assert_array_equal(example["original_shape"], (182, 218, 182))
    np.testing.assert_allclose(example["spacing"], 1.0)
    lesions[example["case_id"].decode()] = int(example["label"].sum())
  # Lesion voxel counts stated in the subset's SOURCE.md: none cropped away.
  assert lesions == {"patient07": 1300, "patient19": 49769, "patient26": 8227}
  assert [e["case_id"] for e in validation] == [b"patient26"]
