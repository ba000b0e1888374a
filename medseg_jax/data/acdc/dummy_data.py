"""Writes tiny made-up ACDC cases in the release's layout (never real data).

  python -m medseg_jax.data.acdc.dummy_data --out /tmp/acdc_dummy

writes

  OUT/database/training/patientNNN/Info.cfg
  OUT/database/training/patientNNN/patientNNN_4d.nii.gz
  OUT/database/training/patientNNN/patientNNN_frameXX.nii.gz     (ED, ES)
  OUT/database/training/patientNNN/patientNNN_frameXX_gt.nii.gz
  OUT/database/testing/patientNNN/...                            (likewise)

Each cine is a stack of a few short-axis slices over a few frames: a bright
left ventricle disc inside a dark myocardial ring, a bright right ventricle
crescent beside it, on a noisy background; the left ventricle shrinks
towards end-systole. Voxels are 1.5625 x 1.5625 mm in-plane and 5 or 10 mm
apart, with the first axis flipped (x towards the patient's left), as
scanner-converted NIfTI often is.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

import numpy as np

from medseg_jax.data import medical_io

GROUP_CYCLE = ("NOR", "MINF", "DCM", "HCM", "RV")


def affine_of(patient: int) -> np.ndarray:
  """`f64[4, 4]` of a dummy patient's grid: x flipped, 5 or 10 mm slices."""
  slice_mm = 10.0 if patient % 2 else 5.0
  affine = np.diag([-1.5625, 1.5625, slice_mm, 1.0])
  affine[:3, 3] = (40.0, -30.0, -20.0 + patient)
  return affine


def _frame(
  rng: np.random.Generator, shape: Sequence[int], lv_radius: float
) -> tuple[np.ndarray, np.ndarray]:
  """One frame: `i16[X, Y, Z]` image and `u8[X, Y, Z]` label."""
  x, y = np.meshgrid(
    np.arange(shape[0]) - shape[0] / 2 + 0.5,
    np.arange(shape[1]) - shape[1] / 2 + 0.5,
    indexing="ij",
  )
  label = np.zeros(shape, np.uint8)
  image = rng.normal(40.0, 8.0, shape)
  for z in range(shape[2]):
    # The heart narrows towards the apex (the last slices).
    taper = 1.0 - 0.5 * z / max(shape[2] - 1, 1)
    lv = lv_radius * taper
    ring = lv + 1.5
    r_lv = np.hypot(x - 1.0, y)
    r_rv = np.hypot(x + ring + 0.5, y)
    slice_label = np.zeros(shape[:2], np.uint8)
    slice_label[(r_rv < ring) & (r_lv >= ring)] = 1
    slice_label[r_lv < ring] = 2
    slice_label[r_lv < lv] = 3
    label[:, :, z] = slice_label
  brightness = np.asarray([0.0, 180.0, 90.0, 200.0])[label]
  image = np.where(label > 0, brightness, image) + rng.normal(0, 5, shape)
  return np.clip(image, 1, None).astype(np.int16), label


def write_patient(
  folder: pathlib.Path,
  patient: int,
  *,
  shape: Sequence[int] = (16, 14, 3),
  num_frames: int = 4,
  seed: int = 0,
) -> dict[str, int]:
  """Writes one patient folder; returns its `{"ED": n, "ES": m}` frames."""
  rng = np.random.default_rng(seed + patient)
  name = f"patient{patient:03d}"
  folder = folder / name
  folder.mkdir(parents=True, exist_ok=True)
  affine = affine_of(patient)
  ed, es = 1, 2 + patient % (num_frames - 1)
  cine, labels = [], {}
  for index in range(1, num_frames + 1):
    # Radius is largest at ED (frame 1) and smallest at ES.
    phase = abs(index - ed) / max(es - ed, 1)
    image, label = _frame(rng, shape, 4.0 - 1.5 * min(phase, 1.0))
    cine.append(image)
    labels[index] = label
  for index in (ed, es):
    stem = folder / f"{name}_frame{index:02d}"
    medical_io.write_nifti(f"{stem}.nii.gz", cine[index - 1], affine)
    medical_io.write_nifti(f"{stem}_gt.nii.gz", labels[index], affine)
  medical_io.write_nifti(
    folder / f"{name}_4d.nii.gz", np.stack(cine, axis=-1), affine
  )
  group = GROUP_CYCLE[patient % len(GROUP_CYCLE)]
  (folder / "Info.cfg").write_text(
    f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: {160 + patient % 30}.0\n"
    f"NbFrame: {num_frames}\nWeight: {60 + patient % 40}.0\n"
  )
  return {"ED": ed, "ES": es}


def make_dummy_data(
  root: pathlib.Path,
  *,
  training: Sequence[int] = (1, 2, 81),
  testing: Sequence[int] = (101,),
  shape: Sequence[int] = (16, 14, 3),
  seed: int = 0,
) -> pathlib.Path:
  """Writes `root/database/{training,testing}/patientNNN/...`.

  Args:
    root: output folder (created).
    training: patient numbers in `training/` (1-80 train, 81-100
      validation).
    testing: patient numbers in `testing/` (101-150).
    shape: `(X, Y, Z)` of every frame.
    seed: for the noise.

  Returns:
    `root`, to use as the builder's manual dir.
  """
  root = pathlib.Path(root)
  for folder, patients in (("training", training), ("testing", testing)):
    (root / "database" / folder).mkdir(parents=True, exist_ok=True)
    for patient in patients:
      write_patient(root / "database" / folder, patient, shape=shape, seed=seed)
  return root


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, type=pathlib.Path)
  args = parser.parse_args()
  print(make_dummy_data(args.out))


if __name__ == "__main__":
  main()
