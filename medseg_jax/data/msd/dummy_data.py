"""Writes a fake decathlon task folder in the release's on-disk layout.

  <root>/Task04_Hippocampus/dataset.json
  <root>/Task04_Hippocampus/imagesTr/hippocampus_002.nii.gz ...
  <root>/Task04_Hippocampus/labelsTr/hippocampus_002.nii.gz ...
  <root>/Task04_Hippocampus/imagesTs/hippocampus_090.nii.gz
  plus macOS `._*` metadata files in each folder, as in the real archives.

Tiny random volumes (12 x 10 x 8 voxels, anisotropic spacing, an LPS-style
affine as ITK writes it, so reorientation has work to do); multi-modal tasks
get one 4-D NIfTI per case with the modality last. Nothing here comes from
the real data.

  python -m medseg_jax.data.msd.dummy_data --out /tmp/msd_dummy --task all
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Sequence

import numpy as np

from medseg_jax.data import medical_io
from medseg_jax.data.msd import msd

SHAPE = (12, 10, 8)
# The ids are not contiguous and not zero-padded in every task, as in the
# release (liver_0, spleen_2, prostate_00, BRATS_001).
CASE_NUMBERS = (2, 3, 10, 14, 27, 31, 40, 52, 61, 70, 83, 95)
TEST_NUMBER = 90
# Apple's AppleDouble header: what a "._" file in the real archives starts
# with. Reading one as NIfTI fails, so the builder must skip them.
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "

# Per task: file prefix, digits of the case number, dataset.json "name",
# "description", "reference", "tensorImageSize" and voxel spacing in mm.
_TASKS = {
  "task01_braintumour": (
    "BRATS",
    3,
    "BRATS",
    "Gliomas segmentation tumour and oedema in on brain images",
    "https://www.med.upenn.edu/sbia/brats2017.html",
    "4D",
    (1.0, 1.0, 1.0),
  ),
  "task02_heart": (
    "la",
    3,
    "LeftAtrium",
    "Left atrium segmentation",
    "King's College London",
    "3D",
    (1.25, 1.25, 1.37),
  ),
  "task03_liver": (
    "liver",
    0,
    "LiTS",
    "Liver and Liver Tumor Segmentation",
    "https://competitions.codalab.org/competitions/17094",
    "3D",
    (0.7, 0.7, 1.0),
  ),
  "task04_hippocampus": (
    "hippocampus",
    3,
    "Hippocampus",
    "Left and right hippocampus segmentation",
    "Vanderbilt University Medical Center",
    "3D",
    (1.0, 1.0, 1.0),
  ),
  "task05_prostate": (
    "prostate",
    2,
    "PROSTATE",
    "Prostate transitional zone and peripheral zone segmentation",
    "Radboud University, Nijmegen Medical Centre",
    "4D",
    (0.6, 0.6, 3.6),
  ),
  "task06_lung": (
    "lung",
    3,
    "Lung",
    "Lung and cancer segmentation",
    "The Cancer Imaging Archive",
    "3D",
    (0.78, 0.78, 1.25),
  ),
  "task07_pancreas": (
    "pancreas",
    3,
    "Pancreas",
    "Pancreas and cancer segmentation",
    "Memorial Sloan Kettering Cancer Center",
    "3D",
    (0.8, 0.8, 2.5),
  ),
  "task08_hepaticvessel": (
    "hepaticvessel",
    3,
    "HepaticVessel",
    "Hepatic Vessels and Tumour Segmentation",
    "Memorial Sloan Kettering Cancer Center",
    "3D",
    (0.8, 0.8, 5.0),
  ),
  "task09_spleen": (
    "spleen",
    0,
    "Spleen",
    "Spleen Segmentation",
    "Memorial Sloan Kettering Cancer Center",
    "3D",
    (0.79, 0.79, 5.0),
  ),
  "task10_colon": (
    "colon",
    3,
    "Colon",
    "Colon cancer segmentation",
    "Memorial Sloan Kettering Cancer Center",
    "3D",
    (0.78, 0.78, 5.0),
  ),
}


def file_name(task: str, number: int) -> str:
  """The release's file name of case `number`, e.g. `liver_10.nii.gz`."""
  prefix, digits = _TASKS[task][:2]
  return f"{prefix}_{number:0{digits}d}.nii.gz"


def affine_of(task: str) -> np.ndarray:
  """`f64[4, 4]`: the dummy grid, x and y pointing Left and Posterior."""
  spacing = _TASKS[task][6]
  affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
  affine[:3, 3] = (120.0, 95.0, -40.0)
  return affine


def _label(num_classes: int) -> np.ndarray:
  """`u8[*SHAPE]`: one slab per foreground class inside a central box."""
  label = np.zeros(SHAPE, np.uint8)
  slabs = np.array_split(np.arange(4, 8), num_classes - 1)
  for class_id, xs in enumerate(slabs, start=1):
    label[xs[0] : xs[-1] + 1, 3:7, 3:5] = class_id
  return label


def _image(
  config: msd.MsdConfig, label: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
  """`[*SHAPE]` or `f32[*SHAPE, C]` intensities that follow the label."""
  channels = []
  for c in range(len(config.channel_names)):
    if config.normalization == "ct":
      # Air around a soft-tissue box, brighter organ, a little bone.
      image = np.full(SHAPE, -1024.0)
      image[1:11, 1:9, :] = rng.normal(40.0, 20.0, (10, 8, SHAPE[2]))
      image = image + 60.0 * (label > 0)
      image[1, 1:9, :] = 1200.0
      channels.append(np.round(image).astype(np.int16))
      continue
    image = rng.normal(100.0 + 50.0 * c, 10.0, SHAPE) + 40.0 * label
    if config.crop_foreground:
      # Skull-stripped: zero outside the brain's box.
      brain = np.zeros(SHAPE, bool)
      brain[3:9, 2:8, 2:6] = True
      image = np.where(brain, image, 0.0)
    channels.append(np.maximum(image, 0.0).astype(np.float32))
  if len(channels) == 1:
    return channels[0]
  return np.stack(channels, axis=-1)


def make_dummy_data(
  root: pathlib.Path,
  task: str = "task04_hippocampus",
  num_cases: int = 5,
  seed: int = 0,
) -> pathlib.Path:
  """Writes `root/TaskXX_Name/` for `task` (a config name of `msd.Msd`).

  Args:
    root: where the task folder goes (a `manual_dir` for the builder).
    task: e.g. `"task04_hippocampus"`.
    num_cases: labelled cases in imagesTr/labelsTr (at most 12).
    seed: for the random intensities.

  Returns:
    The task folder.
  """
  config = msd.CONFIGS[task]
  if not 1 <= num_cases <= len(CASE_NUMBERS):
    raise ValueError(f"num_cases must be in 1..{len(CASE_NUMBERS)}.")
  rng = np.random.default_rng(seed)
  task_dir = pathlib.Path(root) / config.folder
  for sub in ("imagesTr", "labelsTr", "imagesTs"):
    (task_dir / sub).mkdir(parents=True, exist_ok=True)
  affine = affine_of(task)
  names = [file_name(task, n) for n in CASE_NUMBERS[:num_cases]]
  for name in names:
    label = _label(len(config.class_names))
    medical_io.write_nifti(
      task_dir / "imagesTr" / name, _image(config, label, rng), affine
    )
    medical_io.write_nifti(task_dir / "labelsTr" / name, label, affine)
  test_name = file_name(task, TEST_NUMBER)
  medical_io.write_nifti(
    task_dir / "imagesTs" / test_name,
    _image(config, np.zeros(SHAPE, np.uint8), rng),
    affine,
  )
  for sub, name in (
    ("imagesTr", names[0]),
    ("labelsTr", names[0]),
    ("imagesTs", test_name),
  ):
    (task_dir / sub / f"._{name}").write_bytes(APPLE_DOUBLE)
  _, _, title, description, reference, size, _ = _TASKS[task]
  meta = {
    "name": title,
    "description": description,
    "reference": reference,
    "licence": "CC-BY-SA 4.0",
    "release": "1.0 04/05/2018",
    "tensorImageSize": size,
    "modality": {str(i): n for i, n in enumerate(config.channel_names)},
    "labels": {str(i): n for i, n in enumerate(config.class_names)},
    "numTraining": len(names),
    "numTest": 1,
    "training": [
      {"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names
    ],
    "test": [f"./imagesTs/{test_name}"],
  }
  (task_dir / "dataset.json").write_text(json.dumps(meta, indent=4))
  return task_dir


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument(
    "--task",
    default="task04_hippocampus",
    choices=[*msd.CONFIGS, "all"],
  )
  parser.add_argument("--num_cases", type=int, default=5)
  args = parser.parse_args(argv)
  tasks = list(msd.CONFIGS) if args.task == "all" else [args.task]
  for task in tasks:
    print(make_dummy_data(args.out, task, args.num_cases))


if __name__ == "__main__":
  main()
