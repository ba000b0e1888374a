r"""Writes fake Lesjak MS cases in the raw layouts, for tests.

  python -m medseg_jax.data.lesjak_ms.dummy_data --out=/tmp/lesjak_dummy

Nothing comes from the real data: each case is a small random "brain"
(an ellipsoid of noise) with a few spherical "lesions", written as NIfTI in
either the open_ms_data MNI layout or the LIT release layout.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

import numpy as np

from medseg_jax.data import medical_io
from medseg_jax.data.lesjak_ms import lesjak_ms

SHAPE = (20, 24, 18)
# An LAS affine (x flipped): the builder must reorient it to RAS+.
AFFINE = np.array(
  [
    [-1.0, 0.0, 0.0, 10.0],
    [0.0, 1.0, 0.0, -12.0],
    [0.0, 0.0, 1.2, -9.0],
    [0.0, 0.0, 0.0, 1.0],
  ]
)

_LIT_NAMES = {
  "FLAIR": "FLAIR",
  "T1": "T1W",
  "T1POST": "T1WKS",
  "T2": "T2W",
  "label": "consensus_gt",
}


def make_case(seed: int) -> tuple[list[np.ndarray], np.ndarray]:
  """Four modality volumes and a lesion mask on `SHAPE`."""
  rng = np.random.default_rng(seed)
  grid = np.stack(
    np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"), -1
  )
  brain = (grid**2).sum(-1) < 0.8
  label = np.zeros(SHAPE, np.uint8)
  for _ in range(3):
    centre = rng.uniform(-0.4, 0.4, size=3)
    label |= (((grid - centre) ** 2).sum(-1) < 0.03) & brain
  images = []
  for contrast in (2.0, -1.0, 0.5, 1.5):
    base = rng.uniform(50, 150)
    values = base + 10 * rng.standard_normal(SHAPE) + contrast * 30 * label
    images.append(np.where(brain, values, 0.0).astype(np.float32))
  return images, label


def make_dummy_data(
  root: pathlib.Path,
  *,
  patients: Sequence[int] = (7, 19, 26),
  layout: str = "mni",
) -> pathlib.Path:
  """Writes one folder per patient under `root`; returns `root`.

  Args:
    root: output folder (created).
    patients: patient numbers (1-20 go to train, 21-30 to validation).
    layout: `"mni"` (open_ms_data file names) or `"lit"` (LIT release).
  """
  if layout not in ("mni", "lit"):
    raise ValueError(f"Unknown layout {layout!r}; valid: mni, lit.")
  for number in patients:
    folder = root / f"patient{number:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    images, label = make_case(number)
    volumes = dict(zip(lesjak_ms.CHANNEL_NAMES, images, strict=True))
    volumes["label"] = label
    for channel, data in volumes.items():
      if layout == "mni":
        name = lesjak_ms._MNI_FILES[channel]  # noqa: SLF001
      else:
        name = f"patient{number:02d}_{_LIT_NAMES[channel]}.nii.gz"
      medical_io.write_nifti(folder / name, data, AFFINE)
  return root


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument("--layout", default="mni", choices=("mni", "lit"))
  args = parser.parse_args(argv)
  print(make_dummy_data(args.out, layout=args.layout))


if __name__ == "__main__":
  main()
