"""Writes a tiny stand-in for DRIVE in the release's raw layout.

  <root>/DRIVE/training/images/21_training.tif       RGB TIFF
  <root>/DRIVE/training/1st_manual/21_manual1.gif    vessels 255, else 0
  <root>/DRIVE/training/mask/21_training_mask.gif    FOV 255, else 0
  <root>/DRIVE/test/images/01_test.tif
  <root>/DRIVE/test/1st_manual/01_manual1.gif
  <root>/DRIVE/test/mask/01_test_mask.gif

The images are much smaller than the real 565 x 584 (all one size, as in the
release); the GIFs are palette images as in the release. The pixels are
random lines in a disk, never real data.

  python -m medseg_jax.data.drive.dummy_data --out /tmp/drive_dummy
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

import numpy as np
import tifffile
from PIL import Image

SHAPE = (36, 34)  # (H, W); the real images are 584 x 565.
# One case in each split by default: 21 train, 37 validation, 01/02 test.
TRAINING_NUMBERS = (21, 22, 37)
TEST_NUMBERS = (1, 2)


def _case(
  rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Image u8[H, W, 3], vessels u8[H, W] and FOV u8[H, W] (0 and 255)."""
  height, width = shape
  rows, cols = np.mgrid[:height, :width]
  centre = np.asarray(shape) / 2 - 0.5
  fov = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < (
    0.45 * min(shape)
  ) ** 2
  vessels = np.zeros(shape, bool)
  for _ in range(3):  # A few random straight "vessels", 1-2 pixels wide.
    angle = rng.uniform(0, np.pi)
    offset = rng.uniform(-0.3, 0.3) * min(shape)
    distance = (rows - centre[0]) * np.cos(angle) - (cols - centre[1]) * (
      np.sin(angle)
    )
    vessels |= np.abs(distance - offset) < rng.uniform(0.5, 1.0)
  vessels &= fov
  image = np.zeros((*shape, 3))
  image[fov] = rng.uniform(90, 180, 3)
  image[vessels] *= 0.6
  image += rng.normal(0, 4, image.shape) * fov[..., None]
  return (
    np.clip(image, 0, 255).astype(np.uint8),
    np.where(vessels, 255, 0).astype(np.uint8),
    np.where(fov, 255, 0).astype(np.uint8),
  )


def make_dummy_data(
  root: pathlib.Path,
  *,
  training_numbers: Sequence[int] = TRAINING_NUMBERS,
  test_numbers: Sequence[int] = TEST_NUMBERS,
  seed: int = 0,
) -> pathlib.Path:
  """Writes fake DRIVE cases under `root/DRIVE`; returns `root`.

  Args:
    root: the folder to pass as `manual_dir`.
    training_numbers: image numbers (21-40) in `training/`.
    test_numbers: image numbers (1-20) in `test/`.
    seed: for the pixels.
  """
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  for name, numbers in (("training", training_numbers), ("test", test_numbers)):
    folder = root / "DRIVE" / name
    for sub in ("images", "1st_manual", "mask"):
      (folder / sub).mkdir(parents=True, exist_ok=True)
    for number in numbers:
      image, vessels, fov = _case(rng, SHAPE)
      tifffile.imwrite(
        folder / "images" / f"{number:02d}_{name}.tif",
        image,
        photometric="rgb",
      )
      Image.fromarray(vessels).save(
        folder / "1st_manual" / f"{number:02d}_manual1.gif"
      )
      Image.fromarray(fov).save(
        folder / "mask" / f"{number:02d}_{name}_mask.gif"
      )
  return root


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  args = parser.parse_args()
  print(make_dummy_data(args.out))


if __name__ == "__main__":
  main()
