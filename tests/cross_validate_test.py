"""k-fold training from a plan, the pooled table, the post-processing choice,
and fold ensembles (one tiny run per fold, a few steps each)."""

import csv
import json

import numpy as np
import pytest

from medseg_jax import cross_validate
from medseg_jax import plan
from medseg_jax import predict
from medseg_jax.data import medical_io
from medseg_jax.data import pipeline
from medseg_jax.data.from_folder import dummy_data
from medseg_jax.evaluation import case_predictor
from medseg_jax.evaluation import ensemble


@pytest.fixture(scope="module")
def folds_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("cv")
  # 4 PNG cases: 3 train (the pool), 1 test.
  folder = dummy_data.make_dummy_data(root, fmt="png", num_cases=4)
  plan.write_plan(
    folder / plan.DEFAULT_OUTPUT,
    plan.fingerprint_folder(folder),
    memory_budget_bytes=2**20,
    base_features=4,
    num_folds=2,
    # The memory fit has its own tests (tests/plan_test.py).
    measure_fn=lambda config, spec: dict(total=0),
  )
  # An edited plan trains as it stands: no augmentation (faster compiles).
  path = folder / plan.DEFAULT_OUTPUT / plan.PLAN_FILE
  edited = json.loads(path.read_text())
  edited["decisions"]["augment"]["value"] = []
  path.write_text(json.dumps(edited))
  spec = f"configs/auto.py:folder={folder},runlocal"
  workdir = root / "folds"
  summary = cross_validate.cross_validate(spec, str(workdir))
  return folder, workdir, summary


@pytest.mark.slow
@pytest.mark.long
def test_every_pool_case_is_held_out_once_and_pooled(folds_dir):
  _, workdir, summary = folds_dir
  assert summary["num_folds"] == 2
  assert [f["held_out"] for f in summary["folds"]] == [
    "train[0:2]",
    "train[2:3]",
  ]
  rows = list(csv.DictReader((workdir / "cv_per_case.csv").open()))
  cases = sorted({r["case_id"] for r in rows})
  assert cases == ["case000", "case001", "case002"]
  pooled = summary["pooled"]
  assert pooled["plain"]["num_cases"] == 3
  # The pooled Dice is recomputed from the per-case counts of the csv.
  chosen = (
    "largest_component" if summary["postprocessing"]["value"] else ("plain")
  )
  fg = [r for r in rows if r["class"] != "background"]
  tp, fp, fn = (sum(int(r[k]) for r in fg) for k in ("tp", "fp", "fn"))
  assert pooled[chosen]["pooled_foreground_dice"] == pytest.approx(
    2 * tp / (2 * tp + fp + fn)
  )
  # The choice follows the pooled scores, and is recorded.
  on = (
    pooled["largest_component"]["pooled_foreground_dice"]
    > pooled["plain"]["pooled_foreground_dice"]
  )
  assert summary["postprocessing"]["value"] == on
  saved = json.loads((workdir / ensemble.CV_SUMMARY).read_text())
  config = json.loads((workdir / "fold_0" / "config.json").read_text())
  assert config["augment"] == []
  assert saved["postprocessing"] == summary["postprocessing"]
  assert ensemble.chosen_postprocessing(workdir) == on


def _test_image(folder, workdir):
  config = case_predictor.load_trained(str(workdir / "fold_0")).config
  (example,) = pipeline.eval_examples(
    config, config.data_dir, "test", pad_multiple=1
  )
  return example["image"]


@pytest.mark.slow
@pytest.mark.long
def test_ensemble_of_identical_folds_equals_one_fold(folds_dir):
  folder, workdir, _ = folds_dir
  image = _test_image(folder, workdir)
  runs = [workdir / "fold_0", workdir / "fold_1"]
  singles = []
  for run in runs:
    trained = case_predictor.load_trained(str(run))
    singles.append(
      case_predictor.CasePredictor.from_config(
        trained.config, trained.model, trained.variables
      ).predict_probs(image)
    )
  same, _ = ensemble.from_runs([runs[0]] * 3)
  np.testing.assert_allclose(same.predict_probs(image), singles[0], atol=1e-6)
  np.testing.assert_array_equal(
    same.predict_label(image), np.argmax(singles[0], axis=-1)
  )
  # Two different folds: the mean of their softmax, which neither is.
  both, _ = ensemble.from_runs(runs)
  mean = (singles[0] + singles[1]) / 2
  np.testing.assert_allclose(both.predict_probs(image), mean, atol=1e-6)
  assert not np.allclose(singles[0], singles[1], atol=1e-4)


@pytest.mark.slow
@pytest.mark.long
def test_predict_with_a_folds_dir_writes_the_ensemble_mask(folds_dir, tmp_path):
  folder, workdir, _ = folds_dir
  source = folder / "images" / "case003.png"
  written, failed = predict.predict_all(
    str(workdir), [str(source)], str(tmp_path), tta=True, postprocess="off"
  )
  assert not failed
  mask = medical_io.read(written[0], case_id="case003").data
  models, first = ensemble.load_ensemble(
    workdir, largest_component=False, tta_flip_axes="all"
  )
  assert all(m.apply is not None for m in models.members)
  image = _test_image(folder, workdir)
  np.testing.assert_array_equal(
    np.asarray(mask).reshape(image.shape[:-1]), models.predict_label(image)
  )
  assert first.config.eval.tta_flip_axes == (0, 1)


def _dice(prediction, label):
  fg_pred, fg_label = prediction > 0, label > 0
  inter = np.logical_and(fg_pred, fg_label).sum()
  return 2 * inter / (fg_pred.sum() + fg_label.sum())


@pytest.mark.slow
@pytest.mark.long
def test_test_split_scores_each_fold_and_the_ensemble(folds_dir):
  folder, workdir, _ = folds_dir
  test = cross_validate.score_test_split(
    workdir, "test", largest_component=False
  )
  assert json.loads((workdir / cross_validate.CV_TEST).read_text()) == test
  assert [f["fold"] for f in test["folds"]] == [0, 1]
  assert test["ensemble"]["num_cases"] == 1
  config = case_predictor.load_trained(str(workdir / "fold_0")).config
  (example,) = pipeline.eval_examples(
    config, config.data_dir, "test", pad_multiple=1
  )
  label = np.asarray(example["label"]).reshape(example["image"].shape[:-1])
  # One binary class: the pooled foreground Dice is the plain Dice.
  models, _ = ensemble.load_ensemble(workdir, largest_component=False)
  expected = _dice(models.predict_label(example["image"]), label)
  assert test["ensemble"]["pooled_foreground_dice"] == pytest.approx(expected)
  for f, run in zip(test["folds"], ("fold_0", "fold_1"), strict=True):
    single, _ = ensemble.from_runs([workdir / run])
    assert f["pooled_foreground_dice"] == pytest.approx(
      _dice(single.predict_label(example["image"]), label)
    )
  mean = np.mean([f["pooled_foreground_dice"] for f in test["folds"]])
  assert test["mean_single_fold"]["pooled_foreground_dice"] == pytest.approx(
    mean
  )
  assert test["ensemble_minus_mean_fold"] == pytest.approx(
    test["ensemble"]["pooled_foreground_dice"] - mean
  )


def test_a_test_split_inside_the_pool_is_refused():
  import ml_collections

  config = ml_collections.ConfigDict(
    dict(train_split="train[2:3]", test_split="train[0:2]")
  )
  with pytest.raises(ValueError, match=r"shares \['train'\]"):
    cross_validate.check_test_split(config, "train[0:1]")
  cross_validate.check_test_split(config, "test")  # disjoint: accepted
  config.train_split = "train[6:24]+validation"
  with pytest.raises(ValueError, match="validation"):
    cross_validate.check_test_split(config, "validation")
