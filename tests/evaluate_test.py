"""Tests for `python -m medseg_jax.evaluate` and the case predictor."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from configs import unet_synthetic
from medseg_jax import evaluate
from medseg_jax import run_config
from medseg_jax import train
from medseg_jax.data import pipeline
from medseg_jax.evaluation import case_predictor

CLASSES = ("background", "organ", "lesion", "vessel")

# Each test reads a run trained end to end by a module fixture.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_2d_dir):
  """A tiny trained run on the 2-D phantoms, whose final test report used
  sliding windows (smaller than the images) and flip TTA."""
  workdir = tmp_path_factory.mktemp("run")
  config = _config(synthetic_2d_dir)
  config.eval.sliding_window = True
  config.eval.tta_flip_axes = (0, 1)
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


def _predictions(workdir, config=None, split="test[:4]"):
  """(case id, label, prediction) per case of `split`, from the run's
  latest checkpoint through the predictor `config.eval` describes
  (default: the run's own config)."""
  trained = case_predictor.load_trained(str(workdir), "latest", config)
  config = trained.config
  predictor = case_predictor.CasePredictor.from_config(
    config, trained.model, trained.variables
  )
  return [
    (e["case_id"], e["label"], predictor.predict_label(e["image"]))
    for e in pipeline.eval_examples(
      config, config.data_dir, split, pad_multiple=1
    )
  ]


def _dice(label, prediction, c) -> float:
  """Dice of class `c` in numpy; 1 when it is in neither (the documented
  empty-set policy of `metrics.overlap`)."""
  truth, found = label == c, prediction == c
  total = truth.sum() + found.sum()
  return 1.0 if total == 0 else 2 * np.sum(truth & found) / total


def _mean_foreground_dice(cases) -> float:
  return float(
    np.mean(
      [
        np.mean([_dice(label, pred, c) for c in range(1, len(CLASSES))])
        for _, label, pred in cases
      ]
    )
  )


def test_the_run_saved_its_resolved_config(run):
  config, workdir = run
  saved = run_config.load(workdir)
  assert saved.model.features == (4, 8)
  assert saved.data.patch_size == (32, 32)
  assert saved.eval.tta_flip_axes == (0, 1)
  assert saved.test_split == "test[:4]"
  assert run_config.differences(saved, config) == []


def test_evaluate_reproduces_the_trainers_report_file_for_file(run, tmp_path):
  """Same checkpoint, same options: the same CSV and JSON, byte for byte."""
  _, workdir = run
  trainer = json.loads(
    (workdir / "eval" / "test_4_step4_summary.json").read_text()
  )
  assert trainer["sliding_window"] and trainer["tta_flip_axes"] == [0, 1]
  evaluate.evaluate_run(str(workdir), output_dir=str(tmp_path))
  for name in ("test_4_step4_per_case.csv", "test_4_step4_summary.json"):
    assert (tmp_path / name).read_bytes() == (
      workdir / "eval" / name
    ).read_bytes(), name


def test_evaluate_writes_reports_with_all_scores(run, tmp_path):
  _, workdir = run
  summary = evaluate.evaluate_run(
    str(workdir), checkpoint="latest", output_dir=str(tmp_path)
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
  assert len(overlays) == 1
  stored = json.loads((tmp_path / "test_4_step4_summary.json").read_text())
  assert stored["step"] == 4 and stored["split_string"] == "test[:4]"
  # Every reported figure agrees with the predictions scored in numpy.
  rows = {
    (r["case_id"], r["class"]): r
    for r in csv.DictReader(
      (tmp_path / "test_4_step4_per_case.csv").read_text().splitlines()
    )
  }
  cases = _predictions(workdir)
  assert len(rows) == len(cases) * len(CLASSES)
  for case_id, label, pred in cases:
    for c, name in enumerate(CLASSES):
      row = rows[case_id, name]
      truth, found = label == c, pred == c
      assert int(row["tp"]) == np.sum(truth & found)
      assert int(row["fp"]) == np.sum(~truth & found)
      assert int(row["fn"]) == np.sum(truth & ~found)
      assert float(row["dice"]) == pytest.approx(_dice(label, pred, c))
  for c, name in enumerate(CLASSES):
    assert summary["per_class"][name]["dice"]["mean"] == pytest.approx(
      np.mean([_dice(label, pred, c) for _, label, pred in cases])
    )
  assert summary["mean_foreground_dice"] == pytest.approx(
    _mean_foreground_dice(cases)
  )


def test_sliding_window_covering_the_image_matches_whole(run, tmp_path):
  _, workdir = run
  config = run_config.load(workdir)
  config.eval.sliding_window = False
  config.eval.tta_flip_axes = ()
  whole = evaluate.evaluate_run(
    str(workdir), config=config, output_dir=str(tmp_path / "a")
  )
  config.eval.sliding_window = True
  config.eval.window = (128, 128)
  tiled = evaluate.evaluate_run(
    str(workdir), config=config, output_dir=str(tmp_path / "b")
  )
  np.testing.assert_allclose(
    tiled["mean_foreground_dice"], whole["mean_foreground_dice"], atol=1e-6
  )
  assert whole["sliding_window"] is False and tiled["sliding_window"] is True
  # Smaller, overlapping windows with flip TTA and clean-up: the figure is
  # that of these options' predictions, scored in numpy ...
  config.eval.window = (64, 64)
  config.eval.tta_flip_axes = (0, 1)
  config.eval.largest_component = True
  config.eval.surface_metrics = False
  other = evaluate.evaluate_run(
    str(workdir), config=config, output_dir=str(tmp_path / "c")
  )
  assert "hd95" not in other["per_class"]["organ"]
  cases = _predictions(workdir, config)
  assert other["mean_foreground_dice"] == pytest.approx(
    _mean_foreground_dice(cases)
  )

  # ... which keep one connected component per class (faces connected, as
  # documented), where the plain predictions of this barely trained model
  # have several.
  def components(pred):
    return [ndimage.label(pred == c)[1] for c in range(1, len(CLASSES))]

  assert all(n <= 1 for _, _, pred in cases for n in components(pred))
  config.eval.largest_component = False
  plain = _predictions(workdir, config)
  assert max(n for _, _, pred in plain for n in components(pred)) > 1


def test_a_config_of_another_model_names_the_differing_fields(run):
  _, workdir = run
  config = run_config.load(workdir)
  config.model.features = (8, 16)
  config.model.norm = "batch"
  with pytest.raises(ValueError, match=r"model\.features.*model\.norm"):
    evaluate.evaluate_run(str(workdir), config=config)


def test_checkpoint_that_does_not_fit_is_explained(run, tmp_path):
  """A run without config.json, read with a config of another width."""
  _, workdir = run
  bare = tmp_path / "bare"
  shutil.copytree(workdir / "checkpoints", bare / "checkpoints")
  config = run_config.load(workdir)
  config.model.features = (8, 16)
  with pytest.raises(ValueError, match="does not fit the model"):
    evaluate.evaluate_run(str(bare), config=config)
  with pytest.raises(FileNotFoundError, match="config.json"):
    evaluate.evaluate_run(str(bare))


def test_missing_run_is_explained(synthetic_2d_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoints"):
    evaluate.evaluate_run(str(tmp_path), config=_config(synthetic_2d_dir))


def test_split_roles_map_to_the_config():
  config = unet_synthetic.get_config()
  config.test_split = "train[6:12]"
  assert evaluate.resolve_split(config, "test") == "train[6:12]"
  assert evaluate.resolve_split(config, "train[:3]") == "train[:3]"


def _cli(repo_root, *args):
  return subprocess.run(
    [sys.executable, "-m", "medseg_jax.evaluate", *args],
    cwd=repo_root,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )


def test_command_line_needs_only_the_workdir(run, repo_root, tmp_path):
  _, workdir = run
  result = _cli(
    repo_root,
    f"--workdir={workdir}",
    "--config.eval.sliding_window=False",
    "--split=test[:2]",
    "--checkpoint=latest",
    f"--output_dir={tmp_path}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "mean foreground Dice over 2 cases" in result.stdout
  stored = json.loads((tmp_path / "test_2_step4_summary.json").read_text())
  assert stored["sliding_window"] is False  # The override took effect.


def test_command_line_rejects_a_config_file_of_another_model(
  run, repo_root, tmp_path
):
  _, workdir = run
  result = _cli(
    repo_root,
    f"--workdir={workdir}",
    "--config=configs/unet_synthetic.py:runlocal",
    f"--output_dir={tmp_path}",
  )
  assert result.returncode != 0
  assert "model.features" in result.stderr, result.stderr[-3000:]


# ---------------------------------------------------------------------------
# Robustness: --corruptions (medseg_jax.corruptions.robustness).


def _rows(path):
  return list(csv.DictReader(path.read_text().splitlines()))


def test_robustness_severity_zero_is_the_clean_evaluation(run, tmp_path):
  from medseg_jax.corruptions import robustness  # noqa: PLC0415

  _, workdir = run
  config = run_config.load(workdir)
  config.eval.surface_metrics = False  # Dice is what is compared.
  clean = evaluate.evaluate_run(
    str(workdir),
    config=config,
    checkpoint="latest",
    output_dir=str(tmp_path / "clean"),
  )
  summary = robustness.evaluate_robustness(
    str(workdir),
    config=config,
    corruptions="ghosting,rician_noise",
    severities="1,5",
    checkpoint="latest",
    output_dir=str(tmp_path / "rob"),
  )
  # Severity 0 reproduces the clean evaluation's figures exactly (NaN,
  # e.g. the background's surface distances, equal to NaN).
  np.testing.assert_equal(
    summary["clean_summary"]["per_class"], clean["per_class"]
  )
  assert summary["clean"]["mean_foreground"] == clean["mean_foreground_dice"]
  for name in ("ghosting", "rician_noise"):
    entry = summary["corruptions"][name]["mean_foreground"]
    assert entry["dice"]["0"] == clean["mean_foreground_dice"]
  clean_rows = {
    (r["case_id"], r["class"]): r
    for r in _rows(tmp_path / "clean" / "test_4_step4_per_case.csv")
  }
  rows = _rows(tmp_path / "rob" / "test_4_step4_per_case.csv")
  assert len(rows) == (1 + 2 * 2) * 4 * len(CLASSES)
  for r in rows:
    if r["corruption"] == "clean":
      assert r["severity"] == "0"
      want = float(clean_rows[r["case_id"], r["class"]]["dice"])
      assert float(r["dice"]) == pytest.approx(want, abs=1e-12)
  # The summaries recomputed from the per-case rows: mean Dice over cases
  # per severity, then ROOD-MRI's weighting.
  for name in ("ghosting", "rician_noise"):
    for class_name in CLASSES:
      means = []
      for corruption, severity in (("clean", "0"), (name, "1"), (name, "5")):
        values = [
          float(r["dice"])
          for r in rows
          if (r["corruption"], r["severity"], r["class"])
          == (corruption, severity, class_name)
        ]
        means.append(np.mean(values))
      overall, degradation = robustness.rood_summary(means, [1, 5])
      entry = summary["corruptions"][name][class_name]
      assert entry["overall"] == pytest.approx(overall)
      assert entry["degradation"] == pytest.approx(degradation)
  # Severe noise changes some predictions.
  noisy = [r for r in rows if r["corruption"] == "rician_noise"]
  assert any(
    float(r["dice"]) != float(clean_rows[r["case_id"], r["class"]]["dice"])
    for r in noisy
    if r["severity"] == "5"
  )
  png = (tmp_path / "rob" / "test_4_step4_dice.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  assert (tmp_path / "rob" / "test_4_step4_summary.csv").exists()


def test_robustness_corrupts_raw_images_before_normalisation(run):
  """A case scored by the robustness path equals the predictor applied to
  the raw image corrupted by hand, then z-scored in numpy."""
  from medseg_jax import corruptions  # noqa: PLC0415
  from medseg_jax.corruptions import robustness  # noqa: PLC0415
  from medseg_jax.data import registry  # noqa: PLC0415
  from medseg_jax.evaluation import report  # noqa: PLC0415

  _, workdir = run
  trained = case_predictor.load_trained(str(workdir), "latest")
  config = trained.config
  predictor = case_predictor.CasePredictor.from_config(
    config, trained.model, trained.variables
  )
  corrupt = robustness.make_corrupter("bias_field", 4, seed=3)
  result = report.evaluate(
    config, predictor, config.data_dir, "test[:2]", corrupt=corrupt
  )
  source = registry.data_source(config.dataset, "test[:2]", config.data_dir)
  for index, case in enumerate(result.cases):
    raw = np.asarray(source[index]["image"], np.float32)
    key = robustness.case_key(3, "bias_field", index)
    image = np.asarray(corruptions.corrupt("bias_field", key, raw, 4))
    assert not np.allclose(image, raw)
    image = (image - image.mean((0, 1))) / image.std((0, 1))
    pred = predictor.predict_label(image)
    label = np.asarray(source[index]["label"])
    for c in range(len(CLASSES)):
      assert case.scores["dice"][c] == pytest.approx(
        _dice(label, pred, c), abs=1e-6
      )


@pytest.mark.slow
@pytest.mark.long
def test_robustness_command_line(run, repo_root, tmp_path):
  _, workdir = run
  result = _cli(
    repo_root,
    f"--workdir={workdir}",
    "--corruptions=spike,anisotropy",
    "--severities=2",
    "--split=test[:2]",
    "--checkpoint=latest",
    "--config.eval.surface_metrics=False",
    f"--output_dir={tmp_path}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "overall" in result.stdout and "anisotropy" in result.stdout
  names = {p.name for p in tmp_path.iterdir()}
  for suffix in ("per_case.csv", "summary.csv", "summary.json", "dice.png"):
    assert f"test_2_step4_{suffix}" in names, names
  summary = json.loads((tmp_path / "test_2_step4_summary.json").read_text())
  assert summary["severities"] == [0, 2]
  assert summary["parameters"]["spike"]["2"] == {"intensity": 0.4}
  bad = _cli(repo_root, f"--workdir={workdir}", "--corruptions=jpeg")
  assert bad.returncode != 0
  assert "valid: gaussian_noise" in bad.stderr, bad.stderr[-2000:]
