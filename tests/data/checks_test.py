"""Tests for build-time example validation."""

import numpy as np
import pytest
from PIL import Image

from medseg_jax.data import checks


def _example(spatial=(8, 10), channels=1):
  image = np.zeros((*spatial, channels), np.float32)
  label = np.zeros(spatial, np.uint8)
  return image, label


def _check(image, label, **kwargs):
  kwargs = {
    "num_classes": 3,
    "case_id": "case_7",
    "path": "/x/img.png",
  } | kwargs
  checks.check_example(image, label, **kwargs)


@pytest.mark.parametrize("spatial", [(8, 10), (4, 8, 10)])
def test_valid_examples_pass(spatial):
  image, label = _example(spatial, channels=2)
  label.flat[-1] = 2
  _check(image, label)
  _check(image, label, spatial_dims=len(spatial))


def test_invalid_example_error_is_a_value_error():
  assert issubclass(checks.InvalidExampleError, ValueError)


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda im, lb: (im, lb[:, :-1]), "does not match"),
    (lambda im, lb: (im[..., 0], lb), "expected 3"),
    (lambda im, lb: (im[0, :, 0], lb[0]), "axes"),
    (lambda im, lb: (im[None, None], lb[None, None]), "axes"),
    (lambda im, lb: (im, lb.astype(np.float32)), "integer"),
    (lambda im, lb: (im, np.full_like(lb, 3)), r"\[3\] are outside \[0, 3\)"),
    (lambda im, lb: (im, np.full(lb.shape, -1, np.int8)), "outside"),
    (lambda im, lb: (np.full_like(im, np.nan), lb), "NaN"),
    (lambda im, lb: (np.full_like(im, np.inf), lb), "infinite"),
    (lambda im, lb: (im.astype(bool), lb), "real numbers"),
  ],
  ids=[
    "shape_mismatch",
    "no_channel_axis",
    "label_1d",
    "label_4d",
    "float_label",
    "label_too_large",
    "label_negative",
    "nan",
    "inf",
    "bool_image",
  ],
)
def test_invalid_examples_raise_naming_case_and_file(make, match):
  image, label = make(*_example())
  with pytest.raises(checks.InvalidExampleError, match=match) as info:
    _check(image, label)
  assert "case_7" in str(info.value)
  assert "/x/img.png" in str(info.value)


def test_message_names_several_files():
  image, label = _example()
  with pytest.raises(checks.InvalidExampleError, match="/a.png, /b.png"):
    _check(image, label[:-1], path=("/a.png", "/b.png"))


def test_spatial_dims_is_enforced():
  image, label = _example((4, 8, 10))
  with pytest.raises(checks.InvalidExampleError, match="2 spatial axes"):
    _check(image, label, spatial_dims=2)


def test_read_image_reads_png(tmp_path):
  pixels = np.arange(12 * 9, dtype=np.uint8).reshape(12, 9)
  Image.fromarray(pixels).save(tmp_path / "a.png")
  np.testing.assert_array_equal(
    checks.read_image(tmp_path / "a.png", case_id="c"), pixels
  )


def test_read_image_reads_tiff_pages(tmp_path):
  pages = [np.full((5, 6), v, np.uint8) for v in (10, 20, 30)]
  frames = [Image.fromarray(p) for p in pages]
  frames[0].save(tmp_path / "s.tif", save_all=True, append_images=frames[1:])
  for index, page in enumerate(pages):
    read = checks.read_image(tmp_path / "s.tif", case_id="c", page=index)
    np.testing.assert_array_equal(read, page)
  with pytest.raises(checks.InvalidExampleError, match="no page 3") as info:
    checks.read_image(tmp_path / "s.tif", case_id="case_3", page=3)
  assert "case_3" in str(info.value) and "s.tif" in str(info.value)


def test_read_image_converts_mode(tmp_path):
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
  read = checks.read_image(tmp_path / "rgb.png", case_id="c", mode="L")
  assert read.shape == (4, 4)


def _write_png(path):
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (64, 64), np.uint8)).save(path)


@pytest.mark.parametrize(
  "corrupt",
  [
    lambda p: p.unlink(),
    lambda p: p.write_bytes(b"this is not an image"),
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    lambda p: p.write_bytes(
      p.read_bytes()[:100] + b"\0" * 50 + p.read_bytes()[150:]
    ),
  ],
  ids=["missing", "garbage", "empty", "truncated", "damaged"],
)
def test_read_image_turns_failures_into_invalid_example_error(
  tmp_path, corrupt
):
  path = tmp_path / "img.png"
  _write_png(path)
  corrupt(path)
  with pytest.raises(checks.InvalidExampleError) as info:
    checks.read_image(path, case_id="case_42")
  assert "case_42" in str(info.value)
  assert str(path) in str(info.value)
