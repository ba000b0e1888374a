"""Writes a tiny stand-in for Kvasir-SEG in the release's raw layout.

  <root>/Kvasir-SEG/images/<name>.jpg   RGB JPEG, sizes vary between cases
  <root>/Kvasir-SEG/masks/<name>.jpg    RGB JPEG, polyp ~255, background ~0
  <root>/Kvasir-SEG/kavsir_bboxes.json  polyp boxes (as in the release)

or, with `archive=True`, the same tree inside `<root>/kvasir-seg.zip`.
Names are random 25-character strings like the release's. The pixels are
random blobs, never real data.

  python -m medseg_jax.data.kvasir_seg.dummy_data --out /tmp/kvasir_dummy
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import string

import numpy as np
from PIL import Image

from medseg_jax.data.kvasir_seg import kvasir_seg

# (height, width) per case, cycled: the release's sizes vary too.
SHAPES = ((40, 56), (48, 48), (36, 60), (52, 44))


def _name(rng: np.random.Generator) -> str:
  alphabet = np.array(list(string.ascii_lowercase + string.digits))
  return "cju" + "".join(rng.choice(alphabet, 22))


def _case(
  rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
  """Random smooth RGB image u8[H, W, 3] and a polyp disk u8[H, W, 3]."""
  height, width = shape
  rows, cols = np.mgrid[:height, :width]
  centre = rng.uniform(0.3, 0.7, 2) * (height, width)
  radius = rng.uniform(0.15, 0.3) * min(height, width)
  inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2
  base = rng.uniform(60, 200, 3)
  image = base + rng.normal(0, 12, (height, width, 3))
  image[inside] += rng.uniform(20, 50, 3)
  mask = np.repeat(np.where(inside, 255, 0)[..., None], 3, axis=-1)
  return (
    np.clip(image, 0, 255).astype(np.uint8),
    mask.astype(np.uint8),
  )


def make_dummy_data(
  root: pathlib.Path,
  *,
  num_cases: int = 10,
  seed: int = 0,
  archive: bool = False,
) -> pathlib.Path:
  """Writes `num_cases` fake cases under `root`; returns `root`.

  Args:
    root: the folder to pass as `manual_dir`.
    num_cases: how many image/mask pairs.
    seed: for the random names and pixels.
    archive: write `kvasir-seg.zip` (as downloaded) instead of the folder.
  """
  root = pathlib.Path(root)
  release = root / kvasir_seg.RELEASE_FOLDER
  (release / "images").mkdir(parents=True, exist_ok=True)
  (release / "masks").mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  boxes = {}
  for index in range(num_cases):
    name = _name(rng)
    shape = SHAPES[index % len(SHAPES)]
    image, mask = _case(rng, shape)
    Image.fromarray(image).save(release / "images" / f"{name}.jpg", quality=90)
    Image.fromarray(mask).save(release / "masks" / f"{name}.jpg", quality=90)
    rows, cols = np.nonzero(mask[..., 0])
    boxes[name] = {
      "height": shape[0],
      "width": shape[1],
      "bbox": [
        {
          "label": "polyp",
          "xmin": int(cols.min()),
          "ymin": int(rows.min()),
          "xmax": int(cols.max()),
          "ymax": int(rows.max()),
        }
      ],
    }
  (release / "kavsir_bboxes.json").write_text(json.dumps(boxes))
  if archive:
    shutil.make_archive(
      str(root / pathlib.Path(kvasir_seg.ARCHIVE_NAME).stem),
      "zip",
      root_dir=root,
      base_dir=kvasir_seg.RELEASE_FOLDER,
    )
    shutil.rmtree(release)
  return root


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--num_cases", type=int, default=10)
  parser.add_argument("--archive", action="store_true")
  args = parser.parse_args()
  print(
    make_dummy_data(args.out, num_cases=args.num_cases, archive=args.archive)
  )


if __name__ == "__main__":
  main()
