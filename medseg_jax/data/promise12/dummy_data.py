"""Writes tiny made-up PROMISE12 cases in the release's layout (never real data).

  python -m medseg_jax.data.promise12.dummy_data --out /tmp/promise12_dummy

writes MetaImage header + raw data pairs, as the challenge's zip files hold
them:

  OUT/TrainingData_Part1/Case00.mhd, Case00.raw,
      Case00_segmentation.mhd, Case00_segmentation.raw, ...
  OUT/TrainingData_Part2/...   OUT/TrainingData_Part3/...
  OUT/TestData/Case00.mhd, Case00.raw     (unlabelled, as in the challenge)

Cases 00-16 go to Part1, 17-33 to Part2 and 34-49 to Part3 (an assumed
division; the builder does not depend on it). Each image is a small
transversal `i16[X, Y, Z]` stack: a bright ellipsoidal gland in grey tissue
with noise; the segmentation (`u8`, 0/1) is the gland. Voxels are
0.625 x 0.625 mm in-plane and 3.6 mm apart, with an identity ITK direction,
so the RAS+ affine has its first two axes flipped.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

import numpy as np

from medseg_jax.data import medical_io


def part_of(case: int) -> str:
  """The `TrainingData_PartN` folder a dummy case is written to."""
  return f"TrainingData_Part{1 + min(case // 17, 2)}"


def affine_of(case: int) -> np.ndarray:
  """`f64[4, 4]` RAS+ affine of a dummy case (identity direction in LPS)."""
  affine = np.diag([-0.625, -0.625, 3.6, 1.0])
  affine[:3, 3] = (50.0 + case, 40.0, -30.0)
  return affine


def make_case(
  case: int, *, shape: Sequence[int] = (16, 16, 5), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """One case: `i16[X, Y, Z]` image and `u8[X, Y, Z]` segmentation."""
  rng = np.random.default_rng(seed + case)
  grid = np.meshgrid(
    *[np.arange(n) - n / 2 + 0.5 for n in shape], indexing="ij"
  )
  radii = np.asarray(shape) * rng.uniform(0.25, 0.35, 3)
  inside = sum((g / r) ** 2 for g, r in zip(grid, radii, strict=True)) < 1.0
  label = inside.astype(np.uint8)
  image = rng.normal(300.0, 40.0, shape) + 250.0 * label
  return np.clip(image, 1, None).astype(np.int16), label


def make_dummy_data(
  root: pathlib.Path,
  *,
  cases: Sequence[int] = (0, 1, 20, 40, 45),
  shape: Sequence[int] = (16, 16, 5),
  test_data: bool = True,
  seed: int = 0,
) -> pathlib.Path:
  """Writes the training cases `cases` (and an unlabelled TestData case).

  Args:
    root: output folder (created).
    cases: case numbers (00-39 train, 40-44 validation, 45-49 test).
    shape: `(X, Y, Z)` of every volume.
    test_data: also write `TestData/Case00.mhd` without a segmentation,
      which the builder must ignore.
    seed: for the shapes and noise.

  Returns:
    `root`, to use as the builder's manual dir.
  """
  root = pathlib.Path(root)
  for case in cases:
    folder = root / part_of(case)
    folder.mkdir(parents=True, exist_ok=True)
    image, label = make_case(case, shape=shape, seed=seed)
    affine = affine_of(case)
    medical_io.write_metaimage(folder / f"Case{case:02d}.mhd", image, affine)
    medical_io.write_metaimage(
      folder / f"Case{case:02d}_segmentation.mhd", label, affine
    )
  if test_data:
    (root / "TestData").mkdir(parents=True, exist_ok=True)
    image, _ = make_case(99, shape=shape, seed=seed)
    medical_io.write_metaimage(
      root / "TestData" / "Case00.mhd", image, affine_of(0)
    )
  return root


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, type=pathlib.Path)
  args = parser.parse_args()
  print(make_dummy_data(args.out))


if __name__ == "__main__":
  main()
