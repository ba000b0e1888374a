"""Inference sees what training saw: cases smaller than the training patch.

A 3-D U-Net with instance normalisation is trained a few steps on
`dummy_data.make_small_volumes` cases (about 10 x 12 x 10 voxels) with a
16^3 patch, so every training crop is mostly zero padding. The tests check
that every reader of the run pads a small case the same way, and that the
rule matters: padding only to the network's multiple (the rule before
issue 23) gives other probabilities.
"""

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest

from configs import unet_folder
from medseg_jax import evaluate
from medseg_jax import plan
from medseg_jax import predict
from medseg_jax import run_config
from medseg_jax import train
from medseg_jax import writers
from medseg_jax.data import pipeline
from medseg_jax.data import registry
from medseg_jax.data.from_folder import dummy_data
from medseg_jax.evaluation import case_predictor

PATCH = 16


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("small")
  folder = dummy_data.make_small_volumes(
    root / "raw", num_cases=10, shape=(10, 12, 10), jitter=1
  )
  config = unet_folder.get_config(f"folder={folder},patch={PATCH},runlocal")
  config.data_dir = str(root / "tfds")
  config.num_train_steps = 6
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  config.eval.surface_metrics = False
  workdir = root / "run"
  train.train_and_evaluate(config, str(workdir))
  return folder, workdir


def _test_images(workdir):
  config = run_config.load(workdir)
  return [
    example["image"]
    for example in pipeline.eval_examples(
      config, config.data_dir, config.test_split, pad_multiple=1
    )
  ]


@pytest.mark.parametrize("shape", [(10, 12, 10), (7, 9, 11), (16, 16, 16)])
def test_padded_shape_is_at_least_the_patch_and_a_multiple(shape):
  out = case_predictor.padded_shape(shape, (PATCH,) * 3, 8)
  assert out == (16, 16, 16)
  assert case_predictor.padded_shape((17, 5, 40), (16, 16, 16), 8) == (
    24,
    16,
    40,
  )


@pytest.mark.slow  # Reads a run trained end to end.
def test_whole_image_equals_sliding_window_on_a_case_below_the_patch(
  small_run,
):
  _, workdir = small_run
  trained = case_predictor.load_trained(str(workdir), "latest")
  whole = case_predictor.CasePredictor.from_config(
    trained.config, trained.model, trained.variables
  )
  config = trained.config.copy_and_resolve_references()
  config.eval.sliding_window = True
  tiled = case_predictor.CasePredictor.from_config(
    config, trained.model, trained.variables
  )
  assert tiled.window == (PATCH,) * 3
  # The rule before: pad only to the network's size multiple.
  old = dataclasses.replace(whole, min_shape=(1, 1, 1))
  for image in _test_images(workdir):
    assert all(s < PATCH for s in image.shape[:-1])
    probs = whole.predict_probs(image)
    assert probs.shape == (*image.shape[:-1], 3)
    np.testing.assert_allclose(tiled.predict_probs(image), probs, atol=1e-5)
    assert np.abs(old.predict_probs(image) - probs).max() > 1e-3


@pytest.mark.slow  # Reads a run trained end to end.
def test_validation_evaluate_and_predict_agree(small_run, tmp_path):
  folder, workdir = small_run
  # The trainer's last validation (step 6) against evaluate on that step.
  records = writers.read_jsonl(workdir / "metrics.jsonl")
  val = [r for r in records if "val/mean_foreground_dice" in r][-1]
  assert val["step"] == 6
  again = evaluate.evaluate_run(
    str(workdir),
    checkpoint="6",
    split="validation",
    output_dir=str(tmp_path / "val"),
  )
  assert again["mean_foreground_dice"] == pytest.approx(
    val["val/mean_foreground_dice"], abs=1e-9
  )
  # The trainer's final test report against predict's masks on the raw
  # files (identity affine, no resampling: the same voxels).
  eval_dir = workdir / "eval"
  report = json.loads(
    next(eval_dir.glob("test_step*_summary.json")).read_text()
  )
  assert report["per_case"], "empty test report"
  sources = [
    folder / "images" / f"{case_id}.nii.gz" for case_id in report["per_case"]
  ]
  written, failed = predict.predict_all(
    str(workdir), [str(s) for s in sources], str(tmp_path / "masks")
  )
  assert not failed
  for case_id, path in zip(report["per_case"], written, strict=True):
    mask = np.asarray(nib.load(path).dataobj)
    label = np.asarray(
      nib.load(folder / "labels" / f"{case_id}.nii.gz").dataobj
    )
    for index, name in enumerate(("anterior", "posterior"), start=1):
      p, y = mask == index, label == index
      dice = 2 * np.sum(p & y) / max(np.sum(p) + np.sum(y), 1)
      stored = report["per_case"][case_id][name]["dice"]
      if np.sum(p) + np.sum(y) == 0:
        continue  # Empty-class policy is the metric's own (tested there).
      assert dice == pytest.approx(stored, abs=1e-9), (case_id, name)


@pytest.mark.slow  # Reads a run trained end to end.
def test_auto_patch_shrinks_to_the_median_case_shape(small_run, tmp_path):
  folder, workdir = small_run
  config = unet_folder.get_config(f"folder={folder},runlocal")
  config.data_dir = run_config.load(workdir).data_dir
  assert config.data.auto_patch
  config.data.patch_size = (64, 64, 64)  # The 3-D default.
  registry.prepare(config.dataset, config.data_dir, config.manual_dir)
  train._plan_patch(config, config.data_dir)  # noqa: SLF001
  source = registry.data_source(
    config.dataset, config.train_split, config.data_dir, config.manual_dir
  )
  shapes = np.array([source[i]["label"].shape for i in range(len(source))])
  median = np.median(shapes, axis=0)
  expected = tuple(int(m // 2 * 2) for m in median)  # Multiple of 2**1.
  assert tuple(config.data.patch_size) == expected
  assert not config.data.auto_patch
  assert "median case shape" in config.data.patch_reason


def test_patch_for_keeps_the_default_when_cases_are_larger():
  patch, reason = plan.patch_for((200, 300, 90), (64, 64, 64), 8)
  assert patch == (64, 64, 64) and "default" in reason
  patch, _ = plan.patch_for((35, 50, 36), (64, 64, 64), 8)
  assert patch == (32, 48, 32)
  patch, _ = plan.patch_for((3, 50, 36), (64, 64, 64), 8)
  assert patch[0] == 8  # Never below one multiple.
  with pytest.raises(ValueError, match="differ in rank"):
    plan.patch_for((3, 4), (64, 64, 64), 8)
