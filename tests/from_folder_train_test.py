"""End to end: a user's folder -> dataset.json -> build -> train -> eval."""

import csv

import numpy as np
import pytest

from configs import unet_folder
from medseg_jax import train
from medseg_jax.data import medical_io
from medseg_jax.data.from_folder import dummy_data

# The dummy cases are noise in [0, 100) plus 100 inside a box, the label:
# 100 steps are enough for the tiny U-Net to find the box (held-out Dice
# 0.87 for NIfTI, 0.90 for PNG with these seeds), 4 steps are not (0.1 and
# 0.3), so a threshold of 0.6 says that the run really learned.
STEPS = 100


@pytest.mark.slow
@pytest.mark.parametrize(
  ("fmt", "patch", "suffix"), [("nifti", 8, ".nii.gz"), ("png", 16, ".png")]
)
def test_trains_on_a_folder(tmp_path, fmt, patch, suffix):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt=fmt, num_cases=4)
  config = unet_folder.get_config(f"folder={folder},patch={patch},runlocal")
  config.data_dir = str(tmp_path / "tfds")
  config.num_train_steps = STEPS
  config.eval_every_steps = STEPS
  config.checkpoint_every_steps = STEPS
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["num_cases"] == 1  # The one held-out case of 4.
  assert summary["mean_foreground_dice"] > 0.6
  # The report scored the held-out case on its own grid: its counts add up
  # to the raw label file's size, and its true positives and misses to the
  # voxels labelled in it.
  # The final report is the last one written.
  report = max(
    (tmp_path / "run" / "eval").glob("*_per_case.csv"),
    key=lambda p: p.stat().st_mtime_ns,
  )
  (row,) = [
    r
    for r in csv.DictReader(report.read_text().splitlines())
    if r["class"] != "background"
  ]
  case_id = row["case_id"]
  raw = medical_io.read(
    folder / "labels" / f"{case_id}{suffix}", case_id=case_id
  )
  foreground = np.asarray(raw.data) > 0
  counts = {k: int(row[k]) for k in ("tp", "fp", "fn", "tn")}
  assert sum(counts.values()) == foreground.size
  assert counts["tp"] + counts["fn"] == foreground.sum()
  dice = 2 * counts["tp"] / (2 * counts["tp"] + counts["fp"] + counts["fn"])
  assert summary["mean_foreground_dice"] == pytest.approx(dice)


def test_missing_folder_argument_is_explained():
  with pytest.raises(ValueError, match="folder="):
    unet_folder.get_config("")
