"""The one evaluation of a split, and its report.

Used by the trainer (validation and the final test report), by
`python -m medseg_jax.evaluate` and by the benchmark suites, so that the
same checkpoint gives the same numbers whichever program scores it:

  predictor = CasePredictor.from_config(config, model, variables)
  result = report.evaluate(config, predictor, data_dir, "test",
                           surface_metrics=True, keep_arrays=True)
  summary = report.write(config, result, workdir / "eval",
                         split="test", step=600, checkpoint="best")

`evaluate` predicts each case with the one predictor (`case_predictor`),
scores it (`evaluator.score_examples`: confusion counts on device, surface
distances on the host), and with several processes gathers every
process's share. `write` writes `<name>_per_case.csv`,
`<name>_summary.json`, overlay PNGs of the best, median and worst cases and
the scalars, and prints the per-class table; `<name>` is
`<split>_step<step>`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from medseg_jax import console
from medseg_jax.data import pipeline
from medseg_jax.evaluation import case_predictor
from medseg_jax.evaluation import evaluator
from medseg_jax.evaluation import overlays

# Overlay picks, in order, as ranks by mean foreground Dice.
PICKS = ("best", "second_best", "median", "second_worst", "worst")


def evaluate(
  config: ml_collections.ConfigDict,
  predictor: case_predictor.CasePredictor,
  data_dir: str,
  split: str,
  *,
  surface_metrics: bool = False,
  keep_arrays: bool = False,
  desc: str | None = None,
  leave: bool = True,
  corrupt: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> evaluator.EvalResult:
  """Predicts and scores every case of `split`, on every process.

  Args:
    config: the run's config (dataset, normalisation, `eval` options).
    predictor: the model's predictor, with variables.
    data_dir: where the dataset is prepared.
    split: a TFDS split string.
    surface_metrics: add HD95, HD, ASSD and NSD at
      `config.eval.nsd_tolerance_mm`.
    keep_arrays: keep image, label and prediction per case (for overlays).
    desc: progress-bar label (default: the split).
    leave: keep the progress bar on screen when done (the trainer's
      validations pass False: silent unless slow).
    corrupt: ``corrupt(raw_image, index) -> raw_image``, applied to each
      case's image before normalisation (`pipeline.eval_examples`); the
      robustness evaluation (`medseg_jax.corruptions.robustness`) passes
      one corruption at one severity. None: the clean split.

  Returns:
    The result over all cases of the split, in order, on every process.
  """
  count, index = jax.process_count(), jax.process_index()
  examples = pipeline.eval_examples(
    config,
    data_dir,
    split,
    pad_multiple=1,  # The predictor pads (to the patch and the multiple).
    process_index=index,
    process_count=count,
    corrupt=corrupt,
  )
  cases = evaluator.score_examples(
    console.progress(examples, desc=desc or split, unit="case", leave=leave),
    lambda example: predictor.predict_label(example["image"]),
    num_classes=len(_class_names(config)),
    surface_metrics=surface_metrics,
    tolerance_mm=float(config.eval.nsd_tolerance_mm),
    keep_arrays=keep_arrays,
  )
  if not cases and count == 1:
    raise ValueError(f"Split {split!r} of {config.dataset!r} has no cases.")
  local = evaluator.EvalResult(class_names=_class_names(config), cases=cases)
  return evaluator.gather(local)


def _class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  from medseg_jax.data import registry  # noqa: PLC0415

  spec = registry.get_dataset_spec(config.dataset, config.get("manual_dir"))
  return tuple(spec.class_names)


def report_name(split: str, step: int) -> str:
  """`<split>_step<step>`, the split string made file-name safe."""
  return f"{re.sub(r'[^A-Za-z0-9]+', '_', split).strip('_')}_step{step}"


def overlay_picks(
  result: evaluator.EvalResult, limit: int
) -> list[tuple[str, int]]:
  """`[(rank, case index)]`: the best, second best, median, second worst
  and worst case by mean foreground Dice, each case once, at most `limit`.
  """
  dice = np.nanmean(result.score_matrix("dice")[:, 1:], axis=1)
  order = [int(i) for i in np.argsort(dice, kind="stable")]
  n = len(order)
  positions = (n - 1, n - 2, n // 2, 1, 0)
  picks, seen = [], set()
  for rank, position in zip(PICKS, positions, strict=True):
    if 0 <= position < n and order[position] not in seen:
      seen.add(order[position])
      picks.append((rank, order[position]))
  return picks[:limit]


def write(
  config: ml_collections.ConfigDict,
  result: evaluator.EvalResult,
  directory: str | epath.PathLike,
  *,
  split: str,
  step: int,
  checkpoint: str,
  writer: Any = None,
  print_table: bool = True,
) -> dict[str, Any]:
  """Writes the reports, overlays and scalars of `result`; returns the
  summary (on every process; only process 0 writes).

  Args:
    config: the run's config (`eval` options and `num_overlays`).
    result: `evaluate`'s result.
    directory: where the files go (the trainer and `evaluate` use
      `WORKDIR/eval`).
    split: the TFDS split string evaluated.
    step: the checkpoint's step.
    checkpoint: how it was chosen (`best`, `latest` or a step).
    writer: a metric writer for the `<name>/...` scalars, or None.
    print_table: print the per-class table.
  """
  directory = epath.Path(directory)
  name = report_name(split, step)
  options = config.eval
  extra = {
    "step": int(step),
    "checkpoint": str(checkpoint),
    "split_string": split,
    "sliding_window": bool(options.get("sliding_window", False)),
    "tta_flip_axes": [int(a) for a in options.get("tta_flip_axes", ()) or ()],
    "largest_component": bool(options.get("largest_component", False)),
  }
  picks = overlay_picks(result, int(config.get("num_overlays", 5)))
  # With several processes the picked cases' arrays live on the process that
  # evaluated them; every process takes part in sending them.
  evaluator.share_arrays(result, [index for _, index in picks])
  if jax.process_index() != 0:
    return result.summary()
  summary = evaluator.write_reports(result, directory, name, extra=extra)
  dice = np.nanmean(result.score_matrix("dice")[:, 1:], axis=1)
  images = []
  for rank, index in picks:
    case = result.cases[index]
    if case.image is None:
      continue
    images.append(
      (
        f"{rank}_{case.case_id}",
        case.image,
        case.label,
        case.prediction,
        dice[index],
      )
    )
  if images:
    overlays.write_overlays(images, directory / f"{name}_overlays")
  if writer is not None:
    scalars = {
      f"{split}/mean_foreground_dice": summary["mean_foreground_dice"],
      f"{split}/pooled_foreground_dice": summary["pooled_foreground_dice"],
    }
    for class_name, entry in summary["per_class"].items():
      for score, values in entry.items():
        scalars[f"{split}/{score}_{class_name}"] = values["mean"]
    writer.write_scalars(int(step), scalars)
    writer.flush()
  if print_table:
    print(
      f"\nEvaluation of {split!r}, checkpoint step {step} ({checkpoint}):\n"
      f"{evaluator.format_table(result)}\nReports and overlays in "
      f"{directory} ({name}_*)",
      flush=True,
    )
  return summary
