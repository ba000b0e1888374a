"""Writes a tiny stand-in for ISIC 2018 Task 1 in the challenge's layout.

  <root>/ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg ...
  <root>/ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png
  (and the Validation and Test pairs), each folder also holding the
  release's LICENSE.txt and ATTRIBUTION.txt,

or, with `archive=True`, each folder as `<folder>.zip` (as downloaded).
Images are RGB JPEGs of varying size, masks 8-bit PNGs of 0 and 255; one
training image is larger than 512 pixels so the `512` config has to reduce
it. The pixels are random blobs, never real data.

  python -m medseg_jax.data.isic2018.dummy_data --out /tmp/isic_dummy
"""

from __future__ import annotations

import argparse
import pathlib
import shutil

import numpy as np
from PIL import Image

from medseg_jax.data.isic2018 import isic2018

# (height, width), cycled over the cases of a split.
SHAPES = ((30, 40), (36, 32), (24, 44))
LARGE_SHAPE = (540, 720)  # The first training case: reduced to 384 x 512.
# First image number of each split (the real ids do not overlap either).
FIRST_ID = {"train": 0, "validation": 12_000, "test": 15_000}


def _case(
  rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
  """A random skin-coloured image u8[H, W, 3] and an ellipse mask u8[H, W]."""
  height, width = shape
  rows, cols = (
    np.mgrid[:height, :width] / np.asarray([height, width])[:, None, None]
  )
  centre = rng.uniform(0.35, 0.65, 2)
  axes = rng.uniform(0.15, 0.3, 2)
  inside = ((rows - centre[0]) / axes[0]) ** 2 + (
    (cols - centre[1]) / axes[1]
  ) ** 2 < 1
  image = rng.uniform(150, 220, 3) + rng.normal(0, 10, (height, width, 3))
  image[inside] -= rng.uniform(60, 100, 3)
  return (
    np.clip(image, 0, 255).astype(np.uint8),
    np.where(inside, 255, 0).astype(np.uint8),
  )


def make_dummy_data(
  root: pathlib.Path,
  *,
  num_cases: dict[str, int] | None = None,
  seed: int = 0,
  archive: bool = False,
) -> pathlib.Path:
  """Writes fake cases for every split under `root`; returns `root`.

  Args:
    root: the folder to pass as `manual_dir`.
    num_cases: split -> number of cases; default 3 train, 2 validation,
      2 test.
    seed: for the pixels.
    archive: write `<folder>.zip` files instead of the folders.
  """
  root = pathlib.Path(root)
  num_cases = num_cases or {"train": 3, "validation": 2, "test": 2}
  rng = np.random.default_rng(seed)
  for split, (image_folder, mask_folder) in isic2018.FOLDERS.items():
    image_dir, mask_dir = root / image_folder, root / mask_folder
    for folder in (image_dir, mask_dir):
      folder.mkdir(parents=True, exist_ok=True)
      (folder / "LICENSE.txt").write_text("Stand-in licence file.\n")
      (folder / "ATTRIBUTION.txt").write_text("Generated dummy data.\n")
    for index in range(num_cases[split]):
      shape = SHAPES[index % len(SHAPES)]
      if split == "train" and index == 0:
        shape = LARGE_SHAPE
      image, mask = _case(rng, shape)
      name = f"ISIC_{FIRST_ID[split] + index:07d}"
      Image.fromarray(image).save(image_dir / f"{name}.jpg", quality=90)
      Image.fromarray(mask).save(mask_dir / f"{name}_segmentation.png")
    if archive:
      for folder in (image_dir, mask_dir):
        shutil.make_archive(
          str(folder), "zip", root_dir=root, base_dir=folder.name
        )
        shutil.rmtree(folder)
  return root


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--archive", action="store_true")
  args = parser.parse_args()
  print(make_dummy_data(args.out, archive=args.archive))


if __name__ == "__main__":
  main()
