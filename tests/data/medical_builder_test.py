"""Tests for `medical_builder`: `make_example`, its helpers, and the base."""

import dataclasses
import os
import pathlib
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from medseg_jax.data import checks
from medseg_jax.data import medical_builder
from medseg_jax.data import medical_io
from medseg_jax.data import preprocessing
from medseg_jax.data import registry
from medseg_jax.data import spec as spec_lib

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


# ------------------------------------------------------- the declarative base

SPEC = medical_builder.BuilderSpec(
  description="Three tiny volumes.",
  class_names=("background", "organ", "rim"),
  channel_names=("T1",),
  spatial_dims=3,
  splits=("train", "test"),
  needs_manual_dir=True,
  homepage="https://example.org",
  extra_text=("note",),
  extra_metadata={"origin": "tests"},
)
# The medical format of the module docstring, then the extra text.
MEDICAL_FEATURES = [
  "image",
  "label",
  "spacing",
  "affine",
  "original_affine",
  "original_shape",
  "case_id",
  "modality",
  "note",
]


def _volume(seed):
  return np.random.default_rng(seed).normal(size=(3, 4, 2)).astype(np.float32)


class ToyBuilder(medical_builder.MedicalBuilder, skip_registration=True):
  """Cases `c0`..`c2` as NIfTI in the manual dir; train lists c2 before c0."""

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.2.0": "Toy release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Write c0..c2 with `_write_toy_cases`."
  SPEC = SPEC
  PREPROCESSING = NONE

  def _cases_per_split(self, dl_manager):
    root = pathlib.Path(os.fspath(dl_manager.manual_dir))

    def case(name):
      return medical_builder.Case(
        name, (root / f"{name}.nii.gz",), root / f"{name}_label.nii.gz"
      )

    return {"test": [case("c1")], "train": [case("c2"), case("c0")]}

  def _make_example(self, case):
    key, example = super()._make_example(case)
    example["note"] = f"from {key}"
    return key, example


def _write_toy_cases(root):
  root.mkdir()
  for seed in range(3):
    image = _volume(seed)
    _write(root / f"c{seed}.nii.gz", image)
    _write(root / f"c{seed}_label.nii.gz", (image > 0).astype(np.uint8) * 2)
  return root


def test_base_makes_the_declared_info(tmp_path):
  info = ToyBuilder(data_dir=tmp_path).info
  assert list(info.features) == MEDICAL_FEATURES
  assert info.features["image"].shape == (None, None, None, 1)
  assert info.features["image"].np_dtype == np.float32
  assert info.features["label"].shape == (None, None, None)
  assert info.features["label"].np_dtype == np.uint8
  assert info.features["spacing"].shape == (3,)
  assert info.features["original_shape"].shape == (3,)
  assert info.features["image"].to_json_content().encoding == "zlib"
  assert dict(info.metadata) == {
    "class_names": ("background", "organ", "rim"),
    "channel_names": ("T1",),
    "origin": "tests",
  }
  assert str(info.version) == "1.2.0"
  assert info.release_notes == {"1.2.0": "Toy release."}
  assert info.homepage == "https://example.org"
  assert info.supervised_keys == ("image", "label")
  assert info.disable_shuffling
  assert info.file_format.value == "array_record"


def test_base_builds_the_declared_splits_in_case_order(tmp_path):
  manual = _write_toy_cases(tmp_path / "manual")
  builder = ToyBuilder(data_dir=tmp_path / "data")
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=manual, try_download_gcs=False
    )
  )
  # Declared order, not the order `_cases_per_split` returned.
  assert list(builder.info.splits) == ["train", "test"]
  train = builder.as_data_source("train")
  assert [e["case_id"] for e in train] == [b"c2", b"c0"]
  assert [e["note"] for e in train] == [b"from c2", b"from c0"]
  example = train[1]
  np.testing.assert_array_equal(example["image"][..., 0], _volume(0))
  np.testing.assert_array_equal(example["label"], (_volume(0) > 0) * 2)
  np.testing.assert_allclose(example["spacing"], (1, 2, 3))
  assert example["modality"] == b"T1"
  assert len(builder.as_data_source("test")) == 1


def test_plain_format_features():
  spec = dataclasses.replace(
    SPEC,
    channel_names=("a", "b"),
    shape=(4, 5, 6),
    image_encoding=tfds.features.Encoding.BYTES,
    medical=False,
    extra_text=(),
  )
  features = spec.features()
  assert list(features) == ["image", "label", "spacing", "case_id"]
  assert features["image"].shape == (4, 5, 6, 2)
  assert features["label"].shape == (4, 5, 6)
  assert features["image"].to_json_content().encoding == "bytes"
  assert features["label"].to_json_content().encoding == "zlib"
  assert spec.metadata() == {
    "class_names": ("background", "organ", "rim"),
    "origin": "tests",
  }


def test_extra_masks_are_features_and_metadata():
  spec = dataclasses.replace(SPEC, extra_masks=("fov",), extra_text=())
  assert list(spec.features())[-1] == "fov"
  assert spec.features()["fov"].shape == (None, None, None)
  assert spec.metadata()["extra_masks"] == ("fov",)


def test_dataset_specs_name_configs():
  def declare(configs):
    return types.new_class(
      "NamedToy",
      (ToyBuilder,),
      {"skip_registration": True},
      lambda ns: ns.update(BUILDER_CONFIGS=configs),
    )

  expected = spec_lib.DatasetSpec(
    tfds_name="named_toy",
    num_classes=3,
    class_names=("background", "organ", "rim"),
    spatial_dims=3,
    num_channels=1,
    splits=("train", "test"),
    needs_manual_dir=True,
  )
  assert declare([]).dataset_specs() == {"named_toy": expected}
  one = declare([tfds.core.BuilderConfig(name="native")]).dataset_specs()
  assert one == {
    "named_toy": dataclasses.replace(expected, tfds_name="named_toy/native")
  }
  two = declare(
    [tfds.core.BuilderConfig(name="a"), tfds.core.BuilderConfig(name="b")]
  ).dataset_specs()
  assert list(two) == ["named_toy/a", "named_toy/b"]
  assert two["named_toy/b"].tfds_name == "named_toy/b"


def test_splits_must_match_the_declaration(tmp_path):
  class Undeclared(ToyBuilder, skip_registration=True):
    def _cases_per_split(self, dl_manager):
      return {**super()._cases_per_split(dl_manager), "extra": []}

  manual = _write_toy_cases(tmp_path / "manual")
  with pytest.raises(ValueError, match="extra; SPEC declares train, test"):
    Undeclared(data_dir=tmp_path / "data").download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        manual_dir=manual, try_download_gcs=False
      )
    )


@pytest.mark.parametrize(
  "change, message",
  [
    (dict(spatial_dims=4), r"spatial_dims is 4; expected 2 or 3"),
    (dict(class_names=("background",)), r"class_names .* at least 2"),
    (dict(class_names=("a", "a")), r"class_names .* distinct"),
    (dict(channel_names="RGB"), r"channel_names is 'RGB'; expected a list"),
    (dict(splits=("train", "Test")), r"splits is .*'Test'"),
    (dict(splits=()), r"splits is \(\)"),
    (dict(shape=(4, 5)), r"shape is \(4, 5\); expected None or 3 positive"),
    (dict(extra_masks=("label",)), r"extra_masks is \('label',\)"),
    (dict(extra_masks=("note",)), r"extra_text is \('note',\)"),
    (dict(image_encoding="zlib"), r"image_encoding is 'zlib'"),
  ],
)
def test_malformed_spec_fails_clearly(change, message):
  with pytest.raises(ValueError, match=r"BuilderSpec\." + message):
    dataclasses.replace(SPEC, **change)


def _declare(name, **attributes):
  """A builder class with ToyBuilder's declaration changed by `attributes`."""
  body = {
    "VERSION": ToyBuilder.VERSION,
    "RELEASE_NOTES": ToyBuilder.RELEASE_NOTES,
    "MANUAL_DOWNLOAD_INSTRUCTIONS": "Somewhere.",
    "SPEC": SPEC,
    "_cases_per_split": lambda self, dl_manager: {},
    **attributes,
  }
  return types.new_class(
    name, (medical_builder.MedicalBuilder,), {}, lambda ns: ns.update(body)
  )


@pytest.mark.parametrize(
  "attributes, message",
  [
    (dict(SPEC=None), r"declare SPEC = BuilderSpec"),
    (dict(SPEC={"class_names": ()}), r"SPEC is a dict; expected a BuilderSpec"),
    (dict(RELEASE_NOTES={"1.0.0": "x"}), r"no entry for VERSION 1.2.0"),
    (dict(MANUAL_DOWNLOAD_INSTRUCTIONS=None), r"SPEC needs a manual dir"),
    (
      dict(
        BUILDER_CONFIGS=[tfds.core.BuilderConfig(name="odd")],
        spec_for=classmethod(lambda cls, config: "spec"),
        SPEC=None,
      ),
      r"spec_for\('odd'\) is a str",
    ),
  ],
)
def test_malformed_declaration_fails_at_class_definition(attributes, message):
  with pytest.raises(TypeError, match=r"^MisdeclaredToy: .*" + message):
    _declare("MisdeclaredToy", **attributes)
  # Checked before TFDS registers the name.
  with pytest.raises(tfds.core.registered.DatasetNotFoundError):
    tfds.builder_cls("misdeclared_toy")


def test_every_registered_builder_uses_the_base():
  for name, spec in registry.DATASETS.items():
    builder = tfds.builder_cls(spec.tfds_name.split("/")[0])
    assert issubclass(builder, medical_builder.MedicalBuilder), name
    assert builder.dataset_specs()[name] == spec
