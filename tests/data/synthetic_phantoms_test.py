"""Tests for the `synthetic_phantoms` TFDS builder."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import phantoms
from medseg_jax.data.synthetic_phantoms import synthetic_phantoms as sp

SMALL_SIZES = {
  "2d": {"train": 4, "validation": 2, "test": 3},
  "3d": {"train": 2, "validation": 1, "test": 1},
}


def _config(name):
  return sp.SyntheticPhantoms.builder_configs[name]


def _build(data_dir, name):
  builder = tfds.builder(f"synthetic_phantoms/{name}", data_dir=data_dir)
  builder.download_and_prepare()
  return builder


@pytest.fixture(scope="module", autouse=True)
def small_splits():
  tfds.disable_progress_bar()
  with pytest.MonkeyPatch.context() as mp:
    for name, sizes in SMALL_SIZES.items():
      mp.setattr(_config(name), "split_sizes", sizes)
    yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  for name in SMALL_SIZES:
    _build(data_dir, name)
  return data_dir


def test_registered_configs():
  assert set(sp.SyntheticPhantoms.builder_configs) == {"2d", "3d"}
  assert sp.SyntheticPhantoms.name == "synthetic_phantoms"
  assert _config("2d").shape == (128, 128)
  assert _config("3d").shape == (64, 64, 64)
  assert _config("2d").seed != _config("3d").seed


@pytest.mark.parametrize(
  "name, shape, spacing",
  [("2d", (128, 128), (1.0, 1.0)), ("3d", (64, 64, 64), (2.0, 1.0, 1.0))],
)
def test_data_source_gives_numpy_examples(data_dir, name, shape, spacing):
  for split, size in SMALL_SIZES[name].items():
    source = tfds.data_source(
      f"synthetic_phantoms/{name}", split=split, data_dir=data_dir
    )
    assert len(source) == size
    example = source[size - 1]
    assert set(example) == {"image", "label", "spacing", "case_id"}
    assert example["image"].dtype == np.float32
    assert example["image"].shape == (*shape, 1)
    assert example["label"].dtype == np.uint8
    assert example["label"].shape == shape
    assert example["spacing"].dtype == np.float32
    np.testing.assert_array_equal(example["spacing"], spacing)
    # Text comes back as undecoded bytes; examples are in generation order.
    assert example["case_id"] == f"{split}_{size - 1:04d}".encode()


def test_files_are_array_record(data_dir):
  builder = tfds.builder("synthetic_phantoms/2d", data_dir=data_dir)
  assert builder.info.file_format.value == "array_record"
  files = list((data_dir / "synthetic_phantoms" / "2d").rglob("*array_record*"))
  assert len(files) == 3


def test_stored_cases_equal_the_generator_bit_for_bit(data_dir):
  config = _config("2d")
  source = tfds.data_source(
    "synthetic_phantoms/2d", split="validation", data_dir=data_dir
  )
  for index in range(len(source)):
    rng = np.random.default_rng([config.seed, 1, index])
    image, label = phantoms.make_phantom(rng, config.shape, config.spacing)
    assert source[index]["image"].tobytes() == image.tobytes()
    assert source[index]["label"].tobytes() == label.tobytes()


def test_rebuilding_is_deterministic(data_dir, tmp_path):
  _build(tmp_path, "2d")
  for split in SMALL_SIZES["2d"]:
    old = tfds.data_source(
      "synthetic_phantoms/2d", split=split, data_dir=data_dir
    )
    new = tfds.data_source(
      "synthetic_phantoms/2d", split=split, data_dir=tmp_path
    )
    for a, b in zip(old, new, strict=True):
      assert a["image"].tobytes() == b["image"].tobytes()
      assert a["label"].tobytes() == b["label"].tobytes()


def test_splits_share_no_case(data_dir):
  seen = {}
  for split in SMALL_SIZES["2d"]:
    source = tfds.data_source(
      "synthetic_phantoms/2d", split=split, data_dir=data_dir
    )
    for example in source:
      key = example["label"].tobytes()
      assert key not in seen, (split, seen.get(key))
      seen[key] = split


def test_every_class_occurs(data_dir):
  source = tfds.data_source(
    "synthetic_phantoms/2d", split="train", data_dir=data_dir
  )
  present = set()
  for example in source:
    present |= set(np.unique(example["label"]).tolist())
  assert present == {0, 1, 2, 3}


def test_invalid_example_aborts_build_and_leaves_nothing(tmp_path, monkeypatch):
  real_make_phantom = phantoms.make_phantom
  calls = []

  def make_phantom_with_nan(rng, shape, spacing=None):
    image, label = real_make_phantom(rng, shape, spacing)
    calls.append(1)
    if len(calls) == SMALL_SIZES["2d"]["train"] + 2:  # validation_0001
      image[3, 4, 0] = np.nan
    return image, label

  monkeypatch.setattr(phantoms, "make_phantom", make_phantom_with_nan)
  builder = tfds.builder("synthetic_phantoms/2d", data_dir=tmp_path)
  with pytest.raises(checks.InvalidExampleError, match="validation_0001.*NaN"):
    builder.download_and_prepare()

  assert not builder.is_prepared()
  assert not list(tmp_path.rglob("incomplete.*"))
  assert not list(tmp_path.rglob("*.array_record*"))
  # TFDS (4.9.10, pinned) finds no dataset_info.json: no splits to read.
  with pytest.raises(KeyError, match="has not been generated yet"):
    tfds.data_source(
      "synthetic_phantoms/2d", split="train", data_dir=tmp_path, download=False
    )

  monkeypatch.setattr(phantoms, "make_phantom", real_make_phantom)
  builder = _build(tmp_path, "2d")
  assert builder.is_prepared()
  assert len(builder.as_data_source("train")) == SMALL_SIZES["2d"]["train"]
