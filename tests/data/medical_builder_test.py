"""Tests for `medical_builder` (`make_example` and its helpers)."""

import numpy as np
import pytest

from medseg_jax.data import checks
from medseg_jax.data import medical_builder
from medseg_jax.data import medical_io
from medseg_jax.data import preprocessing

AFFINE = np.diag([1.0, 2.0, 3.0, 1.0])
NONE = preprocessing.Preprocessing(normalization=("none",))


def _write(path, data, affine=AFFINE):
  medical_io.write_nifti(path, np.asarray(data), affine)
  return path


def _example(case, **kwargs):
  args = dict(
    num_classes=3,
    spatial_dims=3,
    channel_names=("a",),
    preprocess=NONE,
  )
  args.update(kwargs)
  return medical_builder.make_example(case, **args)


def test_example_fields(tmp_path):
  image = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  label = (image > 10).astype(np.uint8)
  case = medical_builder.Case(
    "c1",
    (_write(tmp_path / "i.nii.gz", image),),
    _write(tmp_path / "l.nii", label),
  )
  example = _example(case)
  np.testing.assert_array_equal(example["image"][..., 0], image)
  np.testing.assert_array_equal(example["label"], label)
  np.testing.assert_allclose(example["spacing"], (1, 2, 3))
  np.testing.assert_allclose(example["affine"], AFFINE)
  np.testing.assert_allclose(example["original_affine"], AFFINE)
  np.testing.assert_array_equal(example["original_shape"], (2, 3, 4))
  assert example["case_id"] == "c1"
  assert example["modality"] == "a"
  assert example["label"].dtype == np.uint8


def test_label_map_handles_negative_and_large_raw_values(tmp_path):
  raw = np.array([-1, 0, 1000, 7, 7, -1], np.int16).reshape(1, 2, 3)
  case = medical_builder.Case(
    "c",
    (_write(tmp_path / "i.nii.gz", np.zeros(raw.shape, np.float32)),),
    _write(tmp_path / "l.nii.gz", raw),
  )
  example = _example(case, label_map={-1: 0, 0: 0, 7: 1, 1000: 2})
  np.testing.assert_array_equal(example["label"].ravel(), [0, 0, 2, 1, 1, 0])
  with pytest.raises(checks.InvalidExampleError, match=r"\[1000\]") as info:
    _example(case, label_map={-1: 0, 0: 0, 7: 1})
  assert "l.nii.gz" in str(info.value)


def test_extra_mask_is_cropped_like_the_image(tmp_path):
  # Channel 0 is nonzero only at x = 1, channel 1 at x = 4 (and at no other
  # x): the crop box is x = 1..4 on every channel, label and mask. Image,
  # label and mask vary along every axis, so a box shifted or flipped for
  # one of them shows.
  shape = (6, 3, 4)
  rng = np.random.default_rng(0)
  first = np.zeros(shape, np.float32)
  first[1] = rng.uniform(1, 2, shape[1:])
  second = np.zeros(shape, np.float32)
  second[4] = rng.uniform(1, 2, shape[1:])
  label = rng.integers(0, 3, shape).astype(np.uint8)
  fov = rng.integers(0, 2, shape).astype(np.uint8)
  case = medical_builder.Case(
    "c",
    (
      _write(tmp_path / "a.nii.gz", first),
      _write(tmp_path / "b.nii.gz", second),
    ),
    _write(tmp_path / "l.nii.gz", label),
    extra_masks=(("fov", _write(tmp_path / "m.nii.gz", fov)),),
  )
  preprocess = preprocessing.Preprocessing(
    normalization=("none",), crop_foreground=True, crop_margin=0
  )
  example = _example(case, channel_names=("a", "b"), preprocess=preprocess)
  box = slice(1, 5)
  np.testing.assert_array_equal(example["image"][..., 0], first[box])
  np.testing.assert_array_equal(example["image"][..., 1], second[box])
  np.testing.assert_array_equal(example["label"], label[box])
  np.testing.assert_array_equal(example["fov"], fov[box])


def test_bad_cases_name_their_files(tmp_path):
  image = _write(tmp_path / "i.nii.gz", np.zeros((2, 2, 2), np.float32))
  with pytest.raises(checks.InvalidExampleError, match="no label") as info:
    _example(medical_builder.Case("c", (image,), None))
  assert "i.nii.gz" in str(info.value)
  label = _write(tmp_path / "l.nii.gz", np.zeros((2, 2, 2), np.uint8))
  with pytest.raises(checks.InvalidExampleError, match="1 image channels"):
    _example(
      medical_builder.Case("c", (image,), label), channel_names=("a", "b")
    )
  with pytest.raises(checks.InvalidExampleError, match="this dataset is 2-D"):
    _example(medical_builder.Case("c", (image,), label), spatial_dims=2)
  big = _write(tmp_path / "big.nii.gz", np.full((2, 2, 2), 5, np.uint8))
  with pytest.raises(checks.InvalidExampleError, match="outside"):
    _example(medical_builder.Case("c", (image,), big))


class _FakeDownloadManager:
  """Stands in for `tfds.download.DownloadManager`'s `manual_dir`."""

  def __init__(self, manual_dir):
    self._manual_dir = manual_dir

  @property
  def manual_dir(self):
    if self._manual_dir is None:
      raise AssertionError("Manual directory not enabled.")
    return self._manual_dir


def test_manual_dir_or_none(tmp_path):
  assert medical_builder.manual_dir_or_none(_FakeDownloadManager(None)) is None
  file = tmp_path / "file.txt"
  file.write_text("x")
  assert medical_builder.manual_dir_or_none(_FakeDownloadManager(file)) is None
  found = medical_builder.manual_dir_or_none(
    _FakeDownloadManager(str(tmp_path))
  )
  assert found == tmp_path


def test_generate_examples_yields_case_ids_in_order(tmp_path):
  image = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  label = _write(tmp_path / "l.nii.gz", (image > 10).astype(np.uint8))
  cases = [
    medical_builder.Case(
      name, (_write(tmp_path / f"{name}.nii", image),), label
    )
    for name in ("b", "a")
  ]
  examples = list(
    medical_builder.generate_examples(
      cases,
      num_classes=3,
      spatial_dims=3,
      channel_names=("a",),
      preprocess=NONE,
      label_map={0: 0, 1: 2},
    )
  )
  assert [key for key, _ in examples] == ["b", "a"]
  for key, example in examples:
    assert example["case_id"] == key
    assert set(np.unique(example["label"]).tolist()) == {0, 2}
