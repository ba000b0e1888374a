r"""k-fold cross-validation: train every fold, pool, choose post-processing.

  python -m medseg_jax.cross_validate \
      --config=configs/auto.py:folder=/data/my_study --workdir=workdirs/cv

  python -m medseg_jax.cross_validate \
      --config=configs/unet_isbi2012.py:steps=500 --folds=5 \
      --workdir=workdirs/isbi_cv

The config must take a ``fold=k`` argument (``configs/auto.py``,
``configs/unet_isbi2012.py``); fold ``k`` is trained into
``WORKDIR/fold_<k>`` (a finished fold is not retrained, an interrupted one
resumes). Each fold's best checkpoint then predicts its held-out cases once;
the cases of all folds are scored together, with and without keeping only
the largest connected component of each class, and the variant with the
higher pooled foreground Dice is chosen (ties: off). Written:

  WORKDIR/cv_summary.json       the pooled scores of both variants, each
                                fold's, and the choice with its reason
  WORKDIR/cv_per_case.csv       every held-out case, as predicted

With ``--test_split=test`` (a split outside the folds' pool, e.g. the
``test`` split a plan never looks at), every fold and the fold ensemble
(mean softmax, the chosen post-processing applied to both) also predict
that split, written to ``WORKDIR/cv_test.json``: each fold's pooled and
mean foreground Dice, their mean, and the ensemble's, as nnU-Net compares
its fold ensemble with single folds.

``python -m medseg_jax.predict --workdir=WORKDIR ...`` then ensembles the
folds and applies the choice (``medseg_jax/evaluation/ensemble.py``).
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from medseg_jax import xla_cpu  # noqa: E402

FOLD_DONE = "cv_fold.json"
CV_TEST = "cv_test.json"


def load_fold_config(config_spec: str, fold: int) -> Any:
  """`configs/x.py:arg` with `fold=<fold>` added, as a ConfigDict.

  Raises:
    ValueError: if the config takes no `fold=` argument.
  """
  path, _, arg = config_spec.partition(":")
  module_name = path.removesuffix(".py").replace("/", ".").lstrip(".")
  module = importlib.import_module(module_name)
  arg = ",".join(filter(None, [arg, f"fold={fold}"]))
  try:
    return module.get_config(arg)
  except ValueError as e:
    if "fold" in str(e) and "Unknown config argument" in str(e):
      raise ValueError(
        f"{path} takes no fold= argument, so it cannot be cross-validated; "
        "use configs/auto.py (a plan) or configs/unet_isbi2012.py."
      ) from e
    raise


def resolve_folds(config_spec: str, num_folds: int | None) -> int:
  """`num_folds`, checked against a plan config's (whose folds cut the
  pool); default: the plan's, or 5.

  Raises:
    ValueError: if `num_folds` differs from the plan's `num_folds`.
  """
  config = load_fold_config(config_spec, 0)
  plan_path = config.get("plan", "")
  if not plan_path:
    return num_folds or 5
  from medseg_jax import plan  # noqa: PLC0415

  planned = int(plan.load_plan(plan_path)["decisions"]["num_folds"]["value"])
  if num_folds and num_folds != planned:
    raise ValueError(
      f"--folds={num_folds}, but the plan {plan_path} cuts the pool into "
      f"num_folds={planned}; edit the plan's num_folds or drop --folds."
    )
  return planned


def score_fold(config: Any, workdir: pathlib.Path) -> tuple[list, list]:
  """The held-out cases of one trained fold, scored without and with
  largest-component post-processing: `(plain, cleaned)` CaseResults."""
  from medseg_jax import console  # noqa: PLC0415
  from medseg_jax.data import pipeline  # noqa: PLC0415
  from medseg_jax.evaluation import case_predictor  # noqa: PLC0415
  from medseg_jax.evaluation import evaluator  # noqa: PLC0415
  from medseg_jax.evaluation import inference  # noqa: PLC0415

  trained = case_predictor.load_trained(str(workdir), "best")
  config = trained.config
  config.eval.largest_component = False
  predictor = case_predictor.CasePredictor.from_config(
    config, trained.model, trained.variables
  )
  num_classes = trained.spec.num_classes
  plain, cleaned = [], []
  examples = pipeline.eval_examples(
    config, config.data_dir, config.test_split, pad_multiple=1
  )
  for example in console.progress(
    examples, desc=workdir.name, unit="case", leave=False
  ):
    label = predictor.predict_label(example["image"])
    for out, prediction in (
      (plain, label),
      (cleaned, inference.keep_largest_component(label)),
    ):
      out.append(
        evaluator.score_case(
          example["case_id"],
          prediction,
          example["label"],
          num_classes=num_classes,
          spacing=example["spacing"],
          surface_metrics=False,
        )
      )
  return plain, cleaned


def choose_postprocessing(
  plain: dict[str, Any], cleaned: dict[str, Any]
) -> dict[str, Any]:
  """On only if it raises the pooled foreground Dice (summaries of the
  pooled cross-validation, `EvalResult.summary()`)."""
  a = plain["pooled_foreground_dice"]
  b = cleaned["pooled_foreground_dice"]
  on = bool(b > a)
  return dict(
    value=on,
    reason=(
      f"largest connected component per class "
      f"{'on' if on else 'off'}: pooled cross-validation foreground Dice "
      f"{b:.4f} with it, {a:.4f} without"
      + ("" if on else " (kept off unless it helps)")
    ),
  )


def cross_validate(
  config_spec: str,
  workdir: str,
  num_folds: int | None = None,
  folds: list[int] | None = None,
  test_split: str = "",
) -> dict[str, Any]:
  """Trains and scores every fold; returns the `cv_summary.json` content.

  Args:
    config_spec: `configs/x.py:arg` of a config with a `fold=` argument.
    workdir: the folds directory.
    num_folds: default: the plan's, or 5.
    folds: train only these folds (e.g. one per machine); the pooled
      summary is written only once every fold is done.
    test_split: a split outside the pool: the folds and their ensemble
      predict it too (`score_test_split`); its summary is under `"test"`.

  Raises:
    ValueError: if `test_split` shares a split with a fold's training
      data.
  """
  from medseg_jax import console  # noqa: PLC0415
  from medseg_jax import train  # noqa: PLC0415
  from medseg_jax.evaluation import evaluator  # noqa: PLC0415

  root = pathlib.Path(workdir).expanduser().resolve()
  root.mkdir(parents=True, exist_ok=True)
  num_folds = resolve_folds(config_spec, num_folds)
  if test_split:
    check_test_split(load_fold_config(config_spec, 0), test_split)
  for fold in folds if folds is not None else range(num_folds):
    fold_dir = root / f"fold_{fold}"
    if (fold_dir / FOLD_DONE).is_file():
      console.write(f"fold {fold}: done already ({fold_dir}).")
      continue
    config = load_fold_config(config_spec, fold)
    console.write(
      f"fold {fold} of {num_folds}: train {config.train_split}, held out "
      f"{config.test_split}"
    )
    summary = train.train_and_evaluate(config, str(fold_dir))
    if "stopped_at_step" in summary:
      raise SystemExit(f"fold {fold} stopped early; run again to resume.")
    (fold_dir / FOLD_DONE).write_text(
      json.dumps(dict(fold=fold, held_out=config.test_split), indent=2)
    )
  missing = [
    k for k in range(num_folds) if not (root / f"fold_{k}" / FOLD_DONE).exists()
  ]
  if missing:
    return dict(missing_folds=missing)

  plain_cases, cleaned_cases, per_fold = [], [], []
  class_names = None
  for fold in range(num_folds):
    fold_dir = root / f"fold_{fold}"
    config = load_fold_config(config_spec, fold)
    plain, cleaned = score_fold(config, fold_dir)
    if class_names is None:
      from medseg_jax.data import registry  # noqa: PLC0415

      class_names = registry.get_dataset_spec(
        config.dataset, config.get("manual_dir")
      ).class_names
    fold_summary = evaluator.EvalResult(class_names, plain).summary()
    per_fold.append(
      dict(
        fold=fold,
        held_out=config.test_split,
        num_cases=len(plain),
        pooled_foreground_dice=fold_summary["pooled_foreground_dice"],
        mean_foreground_dice=fold_summary["mean_foreground_dice"],
      )
    )
    plain_cases += plain
    cleaned_cases += cleaned
  plain_result = evaluator.EvalResult(class_names, plain_cases)
  cleaned_result = evaluator.EvalResult(class_names, cleaned_cases)
  plain_summary = plain_result.summary()
  cleaned_summary = cleaned_result.summary()
  choice = choose_postprocessing(plain_summary, cleaned_summary)
  out = dict(
    config=config_spec,
    num_folds=num_folds,
    folds=per_fold,
    pooled=dict(
      plain={k: plain_summary[k] for k in _KEYS},
      largest_component={k: cleaned_summary[k] for k in _KEYS},
    ),
    mean_fold_pooled_foreground_dice=float(
      sum(f["pooled_foreground_dice"] for f in per_fold) / len(per_fold)
    ),
    postprocessing=choice,
  )
  chosen = cleaned_result if choice["value"] else plain_result
  _write_csv(root / "cv_per_case.csv", evaluator.per_case_rows(chosen))
  tmp = root / "cv_summary.json.tmp"
  tmp.write_text(json.dumps(out, indent=2))
  tmp.replace(root / "cv_summary.json")
  console.write(format_table(out))
  if test_split:
    out["test"] = score_test_split(
      root, test_split, largest_component=choice["value"]
    )
    console.write(format_test_table(out["test"]))
  return out


def _split_names(split: str) -> set[str]:
  """`"train[6:24]+validation"` -> `{"train", "validation"}`."""
  return {part.split("[")[0].strip() for part in split.split("+") if part}


def check_test_split(config: Any, test_split: str) -> None:
  """Refuses a test split that a fold trains or validates on.

  Raises:
    ValueError: naming the shared split.
  """
  pool = _split_names(config.train_split) | _split_names(config.test_split)
  shared = sorted(_split_names(test_split) & pool)
  if shared:
    raise ValueError(
      f"--test_split={test_split} shares {shared} with the folds' pool "
      f"(fold 0 trains on {config.train_split} and holds out "
      f"{config.test_split}); the ensemble must be scored on a split no "
      "fold has seen, e.g. --test_split=test for a plan."
    )


def score_test_split(
  root: pathlib.Path, test_split: str, *, largest_component: bool
) -> dict[str, Any]:
  """Every fold and the fold ensemble on `test_split`; writes and returns
  the `cv_test.json` content.

  Each case is predicted once per fold; the ensemble averages those
  softmax outputs (as `evaluation.ensemble.Ensemble` does), and the
  largest-component choice applies to single folds and ensemble alike.
  """
  import numpy as np  # noqa: PLC0415

  from medseg_jax import console  # noqa: PLC0415
  from medseg_jax.data import pipeline  # noqa: PLC0415
  from medseg_jax.evaluation import ensemble as ensemble_lib  # noqa: PLC0415
  from medseg_jax.evaluation import evaluator  # noqa: PLC0415
  from medseg_jax.evaluation import inference  # noqa: PLC0415

  runs = ensemble_lib.fold_dirs(root)
  models, first = ensemble_lib.from_runs(runs)
  spec = first.spec
  config = first.config

  def finish(label):
    return (
      inference.keep_largest_component(label) if largest_component else label
    )

  def score(case, label):
    return evaluator.score_case(
      case["case_id"],
      finish(label),
      case["label"],
      num_classes=spec.num_classes,
      spacing=case["spacing"],
      surface_metrics=False,
    )

  singles: list[list] = [[] for _ in runs]
  combined = []
  examples = pipeline.eval_examples(
    config, config.data_dir, test_split, pad_multiple=1
  )
  for case in console.progress(
    examples, desc=f"{test_split}: folds + ensemble", unit="case", leave=False
  ):
    total = None
    for k, member in enumerate(models.members):
      probs = member.predict_probs(case["image"])
      singles[k].append(score(case, np.argmax(probs, axis=-1)))
      probs = probs.astype(np.float64)
      total = probs if total is None else total + probs
    combined.append(score(case, np.argmax(total, axis=-1)))
  if not combined:
    raise ValueError(
      f"The test split {test_split} of {config.dataset} is empty."
    )

  def summary_of(cases):
    s = evaluator.EvalResult(spec.class_names, cases).summary()
    return {k: s[k] for k in _KEYS}

  per_fold = [
    dict(fold=int(run.name.split("_")[1]), **summary_of(cases))
    for run, cases in zip(runs, singles, strict=True)
  ]
  ensemble_summary = summary_of(combined)
  mean_single = {
    key: float(np.mean([f[key] for f in per_fold]))
    for key in ("pooled_foreground_dice", "mean_foreground_dice")
  }
  out = dict(
    test_split=test_split,
    largest_component=largest_component,
    folds=per_fold,
    mean_single_fold=mean_single,
    ensemble=ensemble_summary,
    ensemble_minus_mean_fold=float(
      ensemble_summary["pooled_foreground_dice"]
      - mean_single["pooled_foreground_dice"]
    ),
  )
  tmp = root / (CV_TEST + ".tmp")
  tmp.write_text(json.dumps(out, indent=2))
  tmp.replace(root / CV_TEST)
  return out


_KEYS = (
  "num_cases",
  "mean_foreground_dice",
  "pooled_foreground_dice",
  "pooled_dice",
)


def _write_csv(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
  import csv  # noqa: PLC0415
  import io  # noqa: PLC0415

  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  path.write_text(buffer.getvalue())


def format_table(summary: dict[str, Any]) -> str:
  """The per-fold and pooled table printed at the end."""
  lines = [
    "fold  cases  pooled fg Dice  mean fg Dice  held out",
  ]
  for f in summary["folds"]:
    lines.append(
      f"{f['fold']:>4}  {f['num_cases']:>5}  "
      f"{f['pooled_foreground_dice']:>14.4f}  "
      f"{f['mean_foreground_dice']:>12.4f}  {f['held_out']}"
    )
  for name, entry in summary["pooled"].items():
    lines.append(
      f"{'all':>4}  {entry['num_cases']:>5}  "
      f"{entry['pooled_foreground_dice']:>14.4f}  "
      f"{entry['mean_foreground_dice']:>12.4f}  pooled, {name}"
    )
  lines.append("post-processing: " + summary["postprocessing"]["reason"])
  return "\n".join(lines)


def format_test_table(test: dict[str, Any]) -> str:
  """The folds and their ensemble on the test split."""
  n = test["ensemble"]["num_cases"]
  lines = [
    f"{test['test_split']} ({n} cases)   pooled fg Dice  mean fg Dice",
  ]
  for f in test["folds"]:
    lines.append(
      f"fold {f['fold']:<14}  {f['pooled_foreground_dice']:>14.4f}  "
      f"{f['mean_foreground_dice']:>12.4f}"
    )
  mean = test["mean_single_fold"]
  lines.append(
    f"{'mean single fold':<19}  {mean['pooled_foreground_dice']:>14.4f}  "
    f"{mean['mean_foreground_dice']:>12.4f}"
  )
  ens = test["ensemble"]
  lines.append(
    f"{'fold ensemble':<19}  {ens['pooled_foreground_dice']:>14.4f}  "
    f"{ens['mean_foreground_dice']:>12.4f}"
  )
  return "\n".join(lines)


def _define_flags() -> None:
  flags.DEFINE_string(
    "config", None, "configs/x.py:arg of a config with a fold= argument."
  )
  flags.DEFINE_string("workdir", None, "The folds directory.")
  flags.DEFINE_integer("folds", 0, "Number of folds; 0: the plan's, or 5.")
  flags.DEFINE_list("only", None, "Train only these folds (e.g. 0,1).")
  flags.DEFINE_string(
    "test_split",
    "",
    "A split outside the folds' pool (e.g. test): every fold and the fold "
    "ensemble predict it too (cv_test.json).",
  )
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  xla_cpu.configure_flags()
  from medseg_jax import console  # noqa: PLC0415

  f = flags.FLAGS
  console.setup(f.workdir)
  only = [int(k) for k in f.only] if f.only else None
  cross_validate(f.config, f.workdir, f.folds or None, only, f.test_split)


if __name__ == "__main__":
  _define_flags()
  sys.path.insert(0, os.getcwd())  # configs/ of the repository.
  app.run(main)
