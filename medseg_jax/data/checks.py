"""Validation of examples while a dataset is being built.

Every builder passes each example through `check_example` before yielding
it, and reads its image files with `read_image`. Both raise
`InvalidExampleError`, whose message names the case and the file(s) it came
from, so a bad input aborts the build with a message that says what to fix.
TFDS writes a build into a temporary `incomplete.*` directory and only
renames it to the final version directory on success, so an aborted build
leaves no dataset that looks prepared.
"""

import os
from collections.abc import Sequence
from typing import NoReturn

import numpy as np
from PIL import Image

PathLike = str | os.PathLike[str]


class InvalidExampleError(ValueError):
  """An input example is malformed; the message names its case and files."""


def describe_paths(path: PathLike | Sequence[PathLike] | None) -> str:
  """Formats one path or several for an error message."""
  if path is None:
    return "<no file>"
  if isinstance(path, (str, os.PathLike)):
    return os.fspath(path)
  return ", ".join(os.fspath(p) for p in path)


def check_example(
  image: np.ndarray,
  label: np.ndarray,
  *,
  num_classes: int,
  case_id: str,
  path: PathLike | Sequence[PathLike] | None,
  spatial_dims: int | None = None,
) -> None:
  """Checks that an image and its label map form a valid example.

  Args:
    image: `f32[*S, C]` channels-last image, `S` of rank 2 (`H, W`) or 3
      (`D, H, W`).
    label: `int[*S]` map of class ids, without a channel axis.
    num_classes: valid label values are `0 .. num_classes - 1`.
    case_id: identifier of the case, quoted in error messages.
    path: file or files the example was read from (or a description of how
      it was generated), quoted in error messages.
    spatial_dims: if given, the required rank of `S`; otherwise 2 and 3 are
      both accepted.

  Raises:
    InvalidExampleError: if the label's rank is not 2 or 3 (or not
      `spatial_dims`), the image does not have exactly one more axis than the
      label, the spatial shapes differ, the label is not of an integer type or
      has a value outside `[0, num_classes)`, or the image holds NaN or Inf.
  """
  image = np.asarray(image)
  label = np.asarray(label)

  def fail(problem: str) -> NoReturn:
    raise InvalidExampleError(
      f"Invalid example {case_id!r} ({describe_paths(path)}): {problem}"
    )

  allowed_dims = (spatial_dims,) if spatial_dims else (2, 3)
  if label.ndim not in allowed_dims:
    fail(
      f"label has {label.ndim} axes {label.shape}; expected "
      f"{' or '.join(map(str, allowed_dims))} spatial axes and no channel "
      "axis."
    )
  if image.ndim != label.ndim + 1:
    fail(
      f"image has {image.ndim} axes {image.shape}; expected "
      f"{label.ndim + 1} (the label's {label.ndim} spatial axes, then "
      "channels)."
    )
  if image.shape[:-1] != label.shape:
    fail(
      f"label shape {label.shape} does not match the image's spatial shape "
      f"{image.shape[:-1]} (image shape {image.shape})."
    )
  if label.dtype.kind not in "iu":
    fail(f"label dtype is {label.dtype}; expected integer class ids.")
  if label.size:
    low, high = label.min(), label.max()
    if low < 0 or high >= num_classes:
      bad = np.unique(label[(label < 0) | (label >= num_classes)])
      fail(
        f"label values {bad[:10].tolist()} are outside [0, {num_classes}) "
        f"({np.count_nonzero((label < 0) | (label >= num_classes))} voxels)."
      )
  if image.dtype.kind not in "iuf":
    fail(f"image dtype is {image.dtype}; expected real numbers.")
  finite = np.isfinite(image)
  if not finite.all():
    num_nan = np.count_nonzero(np.isnan(image))
    num_inf = image.size - np.count_nonzero(finite) - num_nan
    fail(f"image has {num_nan} NaN and {num_inf} infinite values.")


def read_image(
  path: PathLike,
  *,
  case_id: str,
  page: int = 0,
  mode: str | None = None,
) -> np.ndarray:
  """Reads one 2-D image (or one page of a multi-page file) with Pillow.

  Args:
    path: image file, e.g. a PNG or a (multi-page) TIFF.
    case_id: identifier of the case, quoted in error messages.
    page: page (frame) to read from a multi-page file.
    mode: if given, the Pillow mode to convert to (e.g. `"L"`).

  Returns:
    The pixels as an array, `u8[H, W]` for 8-bit grayscale.

  Raises:
    InvalidExampleError: if the file is missing, unreadable, not an image,
      corrupt or truncated, or has no such page.
  """
  try:
    with Image.open(path) as img:
      if page:
        img.seek(page)
      if mode is not None and img.mode != mode:
        img = img.convert(mode)
      img.load()  # Decodes everything now, so corrupt data fails here.
      return np.array(img)
  except EOFError as e:
    raise InvalidExampleError(
      f"Cannot read case {case_id!r}: {os.fspath(path)} has no page {page} "
      f"({e})."
    ) from e
  # Pillow signals broken files with many exception types (OSError,
  # SyntaxError, ValueError, zlib.error, struct.error, ...); all of them mean
  # the same thing to a dataset build.
  except Exception as e:  # noqa: BLE001
    raise InvalidExampleError(
      f"Cannot read case {case_id!r}: {os.fspath(path)} is missing, "
      f"unreadable or corrupt ({type(e).__name__}: {e})."
    ) from e
