"""Tests for the `isbi2012_em` TFDS builder.

Most tests build from small random stand-ins written here (never the real
images); one test builds the real data when it is present.
"""

import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from medseg_jax.data import checks
from medseg_jax.data.isbi2012_em import isbi2012_em

REAL_DATA = (
  pathlib.Path(__file__).resolve().parents[2]
  / ".."
  / "shared"
  / "data"
  / "isbi2012_em_membrane"
  / "membrane"
).resolve()
NUM_SLICES = 30
SHAPE = (512, 512)


def _fake_stack(seed=0):
  """Random 8-bit images and {0, 255} labels, about 22% membrane (0)."""
  rng = np.random.default_rng(seed)
  # Blocky noise: cheap to compress, so writing 60 PNGs stays fast.
  small = (NUM_SLICES, SHAPE[0] // 8, SHAPE[1] // 8)
  images = rng.integers(0, 256, small, np.uint8).repeat(8, 1).repeat(8, 2)
  membrane = (rng.random(small) < 0.22).repeat(8, 1).repeat(8, 2)
  labels = np.where(membrane, 0, 255).astype(np.uint8)
  return images, labels


def _write_pngs(train_dir, images, labels):
  for kind, stack in (("image", images), ("label", labels)):
    (train_dir / kind).mkdir(parents=True)
    for index, pixels in enumerate(stack):
      Image.fromarray(pixels).save(train_dir / kind / f"{index}.png")


def _write_tiffs(root, images, labels):
  root.mkdir(parents=True, exist_ok=True)
  for name, stack in (
    ("train-volume.tif", images),
    ("train-labels.tif", labels),
  ):
    frames = [Image.fromarray(pixels) for pixels in stack]
    frames[0].save(root / name, save_all=True, append_images=frames[1:])


def _build(data_dir, manual_dir):
  builder = tfds.builder("isbi2012_em", data_dir=data_dir)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
  )
  return builder


@pytest.fixture(scope="module")
def stack():
  tfds.disable_progress_bar()
  return _fake_stack()


@pytest.fixture(scope="module")
def png_root(stack, tmp_path_factory):
  """`<root>/membrane/train/{image,label}/{0..29}.png`."""
  root = tmp_path_factory.mktemp("manual")
  _write_pngs(root / "membrane" / "train", *stack)
  return root


def _assert_matches(data_dir, stack):
  images, labels = stack
  for split, slices in (("train", range(24)), ("validation", range(24, 30))):
    source = tfds.data_source("isbi2012_em", split=split, data_dir=data_dir)
    assert len(source) == len(slices)
    for position in (0, len(slices) - 1):
      index = slices[position]
      example = source[position]
      assert example["case_id"] == f"slice_{index:02d}".encode()
      assert example["image"].dtype == np.float32
      assert example["image"].shape == (*SHAPE, 1)
      np.testing.assert_array_equal(
        example["image"][..., 0], images[index].astype(np.float32) / 255
      )
      assert example["label"].dtype == np.uint8
      assert example["label"].shape == SHAPE
      np.testing.assert_array_equal(example["label"], labels[index] == 0)
      np.testing.assert_allclose(example["spacing"], (4e-6, 4e-6))
      assert example["spacing"].dtype == np.float32


@pytest.mark.parametrize("level", ["root", "membrane", "train"])
def test_png_layouts(png_root, stack, tmp_path, level):
  manual_dir = {
    "root": png_root,
    "membrane": png_root / "membrane",
    "train": png_root / "membrane" / "train",
  }[level]
  builder = _build(tmp_path, manual_dir)
  assert builder.is_prepared()
  assert builder.info.splits["train"].num_examples == 24
  assert builder.info.splits["validation"].num_examples == 6
  assert builder.info.file_format.value == "array_record"
  _assert_matches(tmp_path, stack)


def test_tiff_layout(stack, tmp_path):
  _write_tiffs(tmp_path / "manual", *stack)
  _build(tmp_path / "tfds", tmp_path / "manual")
  _assert_matches(tmp_path / "tfds", stack)


def test_tiff_with_wrong_page_count_is_rejected(stack, tmp_path):
  images, labels = stack
  _write_tiffs(tmp_path / "manual", images[:29], labels[:29])
  with pytest.raises(checks.InvalidExampleError, match="29 pages; expected 30"):
    _build(tmp_path / "tfds", tmp_path / "manual")


def test_unknown_layout_lists_the_expected_ones(tmp_path):
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "notes.txt").write_text("nothing here")
  with pytest.raises(FileNotFoundError) as info:
    _build(tmp_path / "tfds", tmp_path / "manual")
  message = str(info.value)
  assert "membrane/train/image/0.png" in message
  assert "train-volume.tif" in message


def test_metadata():
  builder = tfds.builder("isbi2012_em", data_dir="/nonexistent")
  info = builder.info
  assert "Cardona" in info.citation and "Arganda-Carreras" in info.citation
  assert "non-commercial" in info.redistribution_info.license.lower()
  assert "slices 0-23" in info.description
  assert "contiguous" in info.description
  assert info.metadata["class_names"] == ("cell_interior", "membrane")
  assert "manual_dir" in isbi2012_em.MANUAL_DOWNLOAD_INSTRUCTIONS


def _save(path, pixels):
  Image.fromarray(np.asarray(pixels, np.uint8)).save(path)


def _shrink_label(train, index):
  _save(train / "label" / f"{index}.png", np.zeros((256, 256)))


def _bad_label_value(train, index):
  label = np.full(SHAPE, 255, np.uint8)
  label[10:20, 10:20] = 128
  _save(train / "label" / f"{index}.png", label)


def _garbage(train, index):
  (train / "image" / f"{index}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")


def _truncate(train, index):
  path = train / "image" / f"{index}.png"
  path.write_bytes(path.read_bytes()[:2000])


def _delete(train, index):
  (train / "label" / f"{index}.png").unlink()


def _rgb(train, index):
  _save(train / "image" / f"{index}.png", np.zeros((*SHAPE, 3)))


@pytest.mark.parametrize(
  "damage, index, kind, match",
  [
    (_shrink_label, 3, "label", "does not match"),
    (_bad_label_value, 3, "label", r"found \[128\]"),
    (_garbage, 3, "image", "unreadable or corrupt"),
    # In the validation split, after the train split has been written.
    (_truncate, 27, "image", "unreadable or corrupt"),
    (_delete, 5, "label", "missing"),
    (_rgb, 0, "image", "8-bit grayscale"),
  ],
  ids=[
    "shape_mismatch",
    "label_value",
    "garbage",
    "truncated",
    "missing",
    "rgb",
  ],
)
def test_bad_input_aborts_build_and_leaves_nothing(
  png_root, tmp_path, damage, index, kind, match
):
  manual_dir = tmp_path / "manual"
  shutil.copytree(png_root, manual_dir)
  train = manual_dir / "membrane" / "train"
  damage(train, index)
  data_dir = tmp_path / "tfds"

  builder = tfds.builder("isbi2012_em", data_dir=data_dir)
  with pytest.raises(checks.InvalidExampleError, match=match) as info:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
  message = str(info.value)
  assert f"slice_{index:02d}" in message
  assert str(train / kind / f"{index}.png") in message

  # Nothing that looks like a dataset is left behind.
  assert not builder.is_prepared()
  assert not tfds.builder("isbi2012_em", data_dir=data_dir).is_prepared()
  assert not list(data_dir.rglob("incomplete.*"))
  assert not list(data_dir.rglob("*.array_record*"))
  assert not list(data_dir.rglob("dataset_info.json"))
  # Reading fails, whether or not TFDS may try to build (it has no manual
  # directory this time).
  with pytest.raises(Exception):  # noqa: B017 - TFDS raises several types.
    tfds.data_source("isbi2012_em", split="train", data_dir=data_dir)
  with pytest.raises(Exception):  # noqa: B017
    tfds.data_source(
      "isbi2012_em", split="train", data_dir=data_dir, download=False
    )

  # Once the input is fixed, the same data_dir builds.
  shutil.rmtree(manual_dir)
  shutil.copytree(png_root, manual_dir)
  builder = _build(data_dir, manual_dir)
  assert builder.is_prepared()
  assert (
    len(tfds.data_source("isbi2012_em", split="validation", data_dir=data_dir))
    == 6
  )


def test_real_data(tmp_path):
  if not (REAL_DATA / "train" / "image" / "0.png").exists():
    pytest.skip(
      f"ISBI 2012 EM data not found at {REAL_DATA}; see "
      "isbi2012_em.MANUAL_DOWNLOAD_INSTRUCTIONS."
    )
  tfds.disable_progress_bar()
  _build(tmp_path, REAL_DATA)
  membrane, total = 0, 0
  for split, size in (("train", 24), ("validation", 6)):
    source = tfds.data_source("isbi2012_em", split=split, data_dir=tmp_path)
    assert len(source) == size
    for example in source:
      label, image = example["label"], example["image"]
      assert set(np.unique(label).tolist()) == {0, 1}
      assert image.shape == (512, 512, 1)
      assert 0.0 <= image.min() and image.max() <= 1.0
      membrane += int(label.sum())
      total += label.size
  assert 0.19 < membrane / total < 0.25  # About 22% membrane.
