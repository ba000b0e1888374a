"""Tests for `python -m medseg_jax.evaluate` and the case predictor."""

import json
import subprocess
import sys

import numpy as np
import pytest

from configs import unet_synthetic
from medseg_jax import evaluate
from medseg_jax import train

# Each test reads a run trained end to end by a module fixture.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_2d_dir):
  """A tiny trained run on the 2-D phantoms."""
  workdir = tmp_path_factory.mktemp("run")
  config = _config(synthetic_2d_dir)
  train.train_and_evaluate(config, str(workdir))
  return config, workdir


def _config(data_dir):
  config = unet_synthetic.get_config("runlocal")
  config.data_dir = str(data_dir)
  config.data.patch_size = (32, 32)
  config.model.features = (4, 8)
  config.num_train_steps = 4
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.test_split = "test[:4]"
  config.num_overlays = 1
  return config


def test_evaluate_writes_reports_with_all_scores(run, tmp_path):
  config, workdir = run
  summary = evaluate.evaluate_run(
    config, str(workdir), checkpoint="latest", output_dir=str(tmp_path)
  )
  assert summary["num_cases"] == 4
  organ = summary["per_class"]["organ"]
  for score in (
    "dice",
    "iou",
    "sensitivity",
    "specificity",
    "precision",
    "volume_similarity",
    "hd95",
    "hd",
    "assd",
    "nsd",
  ):
    assert score in organ, score
  files = {p.name for p in tmp_path.iterdir()}
  assert "test_4_step4_per_case.csv" in files
  assert "test_4_step4_summary.json" in files
  overlays = list((tmp_path / "test_4_step4_overlays").iterdir())
  assert len(overlays) >= 1
  stored = json.loads((tmp_path / "test_4_step4_summary.json").read_text())
  assert stored["step"] == 4 and stored["split_string"] == "test[:4]"


def test_whole_image_equals_the_trainers_own_report(run, tmp_path):
  """The CLI's whole-image Dice is the trainer's final test Dice."""
  config, workdir = run
  trainer = json.loads((workdir / "eval" / "test[:4]_summary.json").read_text())
  summary = evaluate.evaluate_run(
    config,
    str(workdir),
    checkpoint=str(trainer["step"]),
    output_dir=str(tmp_path),
  )
  np.testing.assert_allclose(
    summary["mean_foreground_dice"], trainer["mean_foreground_dice"], atol=1e-6
  )


def test_sliding_window_covering_the_image_matches_whole(run, tmp_path):
  config, workdir = run
  whole = evaluate.evaluate_run(
    config, str(workdir), checkpoint="latest", output_dir=str(tmp_path / "a")
  )
  config = config.copy_and_resolve_references()
  config.eval.sliding_window = True
  config.eval.window = (128, 128)
  tiled = evaluate.evaluate_run(
    config, str(workdir), checkpoint="latest", output_dir=str(tmp_path / "b")
  )
  np.testing.assert_allclose(
    tiled["mean_foreground_dice"], whole["mean_foreground_dice"], atol=1e-6
  )
  # Smaller, overlapping windows with flip TTA and clean-up also run.
  config.eval.window = (64, 64)
  config.eval.tta_flip_axes = (0, 1)
  config.eval.largest_component = True
  config.eval.surface_metrics = False
  other = evaluate.evaluate_run(
    config, str(workdir), checkpoint="latest", output_dir=str(tmp_path / "c")
  )
  assert 0.0 <= other["mean_foreground_dice"] <= 1.0
  assert "hd95" not in other["per_class"]["organ"]


def test_wrong_config_for_the_checkpoint_is_explained(run):
  config, workdir = run
  config = config.copy_and_resolve_references()
  config.model.features = (8, 16)
  with pytest.raises(ValueError, match="does not fit the model"):
    evaluate.evaluate_run(config, str(workdir))


def test_missing_run_is_explained(synthetic_2d_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoints"):
    evaluate.evaluate_run(_config(synthetic_2d_dir), str(tmp_path))


def test_split_roles_map_to_the_config():
  config = unet_synthetic.get_config()
  config.test_split = "train[6:12]"
  assert evaluate.resolve_split(config, "test") == "train[6:12]"
  assert evaluate.resolve_split(config, "train[:3]") == "train[:3]"


def test_command_line(run, repo_root, tmp_path):
  config, workdir = run
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "medseg_jax.evaluate",
      "--config=configs/unet_synthetic.py:runlocal",
      f"--workdir={workdir}",
      f"--config.data_dir={config.data_dir}",
      "--config.model.features=(4, 8)",
      "--config.data.patch_size=(32, 32)",
      "--split=test[:2]",
      "--checkpoint=latest",
      f"--output_dir={tmp_path}",
    ],
    cwd=repo_root,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "mean foreground Dice over 2 cases" in result.stdout
