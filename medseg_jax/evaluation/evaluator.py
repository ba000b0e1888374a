"""Scoring of predicted cases: per-case, per-class scores and their reports.

Each case's prediction (from `case_predictor`, or a classical baseline) is
scored by `score_case`: the confusion counts (TP, FP, FN, TN per class) on
device, the overlap scores from them on the host (`metrics.overlap`,
dividing once), and the surface distances on the host with the voxel
spacing (`metrics.surface`). `EvalResult` holds a split's cases and
summarises them; `gather` puts several processes' shares together;
`write_reports` and `format_table` are the files and the table that
`evaluation.report` writes and prints.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from medseg_jax.metrics import overlap
from medseg_jax.metrics import surface

# Scores in the order reports list them. Surface scores are present only
# when the evaluation computed them (`surface=True`).
SCORE_NAMES = overlap.SCORE_KEYS + surface.SURFACE_KEYS
TABLE_SCORES = ("dice", "iou", "sensitivity", "specificity", "hd95")


@dataclasses.dataclass
class CaseResult:
  case_id: str
  counts: dict[str, np.ndarray]  # each i64[C]
  scores: dict[str, np.ndarray]  # each f64[C]
  image: np.ndarray | None = None  # raw f32[*S, C], kept for overlays
  label: np.ndarray | None = None  # i32[*S]
  prediction: np.ndarray | None = None  # i32[*S]


@dataclasses.dataclass
class EvalResult:
  class_names: tuple[str, ...]
  cases: list[CaseResult]

  @property
  def score_names(self) -> tuple[str, ...]:
    """The scores every case has, in `SCORE_NAMES` order."""
    present = set(self.cases[0].scores) if self.cases else set()
    return tuple(name for name in SCORE_NAMES if name in present)

  def score_matrix(self, name: str) -> np.ndarray:
    """``f64[num_cases, num_classes]`` of one score."""
    return np.stack([case.scores[name] for case in self.cases])

  def summary(self) -> dict[str, Any]:
    """Mean and std per class of each score (NaN-aware), the mean
    foreground Dice (classes 1..C-1) that model selection uses, and the
    pooled Dice.

    The pooled Dice of a class is 2 sum(TP) / (2 sum(TP) + sum(FP) +
    sum(FN)) over all cases: one score for the whole split. Unlike the
    mean over cases it does not jump when a case without the class gains
    or loses a few false-positive voxels (that case's Dice flips between
    1 and 0), so it is the steadier figure for comparing two runs.
    """
    out: dict[str, Any] = {"num_cases": len(self.cases), "per_class": {}}
    for index, name in enumerate(self.class_names):
      entry = {}
      for score in self.score_names:
        values = self.score_matrix(score)[:, index]
        defined = values[~np.isnan(values)]
        entry[score] = {
          "mean": float(defined.mean()) if defined.size else float("nan"),
          "std": float(defined.std()) if defined.size else float("nan"),
          "n": int(defined.size),
        }
      out["per_class"][name] = entry
    dice = self.score_matrix("dice")[:, 1:]
    per_case = np.nanmean(dice, axis=1) if dice.size else np.zeros(0)
    out["mean_foreground_dice"] = (
      float(np.nanmean(per_case)) if per_case.size else float("nan")
    )
    pooled = {}
    if self.cases:
      # The per-case formula and its empty-class policy, on summed counts.
      summed = {
        k: np.sum([case.counts[k] for case in self.cases], axis=0)
        for k in overlap.COUNT_KEYS
      }
      dice = overlap.scores_from_counts(summed)["dice"]
      pooled = {name: float(dice[i]) for i, name in enumerate(self.class_names)}
    out["pooled_dice"] = pooled
    foreground = [pooled[name] for name in self.class_names[1:] if pooled]
    out["pooled_foreground_dice"] = (
      float(np.mean(foreground)) if foreground else float("nan")
    )
    return out


# ---------------------------------------------------------------------------
# Several processes: process p evaluates cases p, p + P, ... of a split.
# ---------------------------------------------------------------------------


def _allgather_bytes(blob: bytes) -> list[bytes]:
  """Every process's ``blob``, in process order, on every process."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  data = np.frombuffer(blob, np.uint8)
  sizes = multihost_utils.process_allgather(np.array([data.size], np.int32))
  sizes = np.asarray(sizes).reshape(-1)
  padded = np.zeros(max(int(sizes.max()), 1), np.uint8)
  padded[: data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [bytes(gathered[p, : sizes[p]]) for p in range(len(sizes))]


def gather(local: EvalResult) -> EvalResult:
  """Puts every process's cases together, in the split's order.

  Args:
    local: this process's result, over cases ``p, p + P, ...`` of the split
      (``pipeline.eval_examples(..., process_index=p, process_count=P)``).

  Returns:
    On every process, the result over all cases in order: ids, counts and
    scores (exactly, as JSON of float64). Arrays kept for overlays stay on
    the process that evaluated the case (see ``share_arrays``). With one
    process, ``local`` itself.
  """
  if jax.process_count() == 1:
    return local
  records = [
    {
      "case_id": case.case_id,
      "counts": {k: v.tolist() for k, v in case.counts.items()},
      "scores": {k: v.tolist() for k, v in case.scores.items()},
    }
    for case in local.cases
  ]
  blobs = _allgather_bytes(json.dumps(records).encode())
  shares = [json.loads(blob) for blob in blobs]
  own = jax.process_index()
  cases = []
  for i in range(sum(len(share) for share in shares)):
    process, row = i % len(shares), i // len(shares)
    if process == own:
      cases.append(local.cases[row])
      continue
    record = shares[process][row]
    cases.append(
      CaseResult(
        case_id=record["case_id"],
        counts={
          k: np.asarray(v, np.int64) for k, v in record["counts"].items()
        },
        scores={
          k: np.asarray(v, np.float64) for k, v in record["scores"].items()
        },
      )
    )
  if not cases:
    raise ValueError("The evaluation split has no examples.")
  return EvalResult(class_names=local.class_names, cases=cases)


def share_arrays(result: EvalResult, indices: Sequence[int]) -> None:
  """Copies the kept arrays of cases ``indices`` of a ``gather``-ed result
  to every process (in place), from the process that evaluated each.

  For the few cases drawn as overlays; a no-op with one process.
  """
  if jax.process_count() == 1:
    return
  count, own = jax.process_count(), jax.process_index()
  buffer = io.BytesIO()
  arrays = {}
  for index in indices:
    case = result.cases[index]
    if index % count == own and case.image is not None:
      arrays[f"{index}/image"] = case.image
      arrays[f"{index}/label"] = case.label
      arrays[f"{index}/prediction"] = case.prediction
  np.savez(buffer, **arrays)
  for blob in _allgather_bytes(buffer.getvalue()):
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
      for key in data.files:
        index, name = key.split("/")
        setattr(result.cases[int(index)], name, data[key])


# ---------------------------------------------------------------------------
# Reports.
# ---------------------------------------------------------------------------


def per_case_rows(result: EvalResult) -> list[dict[str, Any]]:
  rows = []
  for case in result.cases:
    for index, name in enumerate(result.class_names):
      row = {"case_id": case.case_id, "class": name}
      for score in result.score_names:
        row[score] = float(case.scores[score][index])
      for key in ("tp", "fp", "fn", "tn"):
        row[key] = int(case.counts[key][index])
      rows.append(row)
  return rows


def write_reports(
  result: EvalResult,
  directory: str | epath.Path,
  split: str,
  extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Writes ``<split>_per_case.csv`` and ``<split>_summary.json``.

  Both are written to a temporary name first and renamed, so a reader never
  sees a half-written file.
  """
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  rows = per_case_rows(result)
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  _atomic_write(directory / f"{split}_per_case.csv", buffer.getvalue())
  summary = result.summary()
  summary["split"] = split
  summary.update(extra or {})
  summary["per_case"] = {
    case.case_id: {
      name: {s: float(case.scores[s][i]) for s in result.score_names}
      for i, name in enumerate(result.class_names)
    }
    for case in result.cases
  }
  _atomic_write(
    directory / f"{split}_summary.json",
    json.dumps(summary, indent=2, sort_keys=True, allow_nan=True),
  )
  return summary


def _atomic_write(path: epath.Path, text: str) -> None:
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def format_table(result: EvalResult) -> str:
  """A per-class table of mean ± std over cases."""
  summary = result.summary()
  scores = [s for s in TABLE_SCORES if s in result.score_names]
  header = f"{'class':<16}" + "".join(f"{s:>20}" for s in scores)
  lines = [header, "-" * len(header)]
  for name in result.class_names:
    entry = summary["per_class"][name]
    cells = []
    for score in scores:
      mean, std = entry[score]["mean"], entry[score]["std"]
      cells.append(f"{mean:>12.4f} ± {std:<6.4f}")
    lines.append(f"{name:<16}" + "".join(f"{c:>20}" for c in cells))
  lines.append("-" * len(header))
  lines.append(
    f"mean foreground Dice over {summary['num_cases']} cases: "
    f"{summary['mean_foreground_dice']:.4f}; pooled over the cases: "
    f"{summary['pooled_foreground_dice']:.4f}"
  )
  return "\n".join(lines)


def score_case(
  case_id: str,
  prediction: np.ndarray,
  label: np.ndarray,
  *,
  num_classes: int,
  spacing: Sequence[float],
  surface_metrics: bool = True,
  tolerance_mm: float = 1.0,
  mask: np.ndarray | None = None,
) -> CaseResult:
  """Scores one host-side prediction (sliding-window or baseline output).

  Args:
    case_id: name of the case.
    prediction: `int[*S]` class ids.
    label: `int[*S]` ground truth.
    num_classes: number of classes.
    spacing: voxel size in mm (array axis order), for surface metrics.
    surface_metrics: add HD95, HD, ASSD and NSD.
    tolerance_mm: NSD tolerance.
    mask: optional `[*S]` of valid voxels for the overlap counts.
  """
  counts = jax.device_get(
    _counts_fn(num_classes)(
      jnp.asarray(prediction, jnp.int32)[None],
      jnp.asarray(label, jnp.int32)[None],
      None if mask is None else jnp.asarray(mask, jnp.float32)[None],
    )
  )
  counts = {k: np.asarray(v[0], np.int64) for k, v in counts.items()}
  scores = overlap.scores_from_counts(counts)
  if surface_metrics:
    scores.update(
      surface.surface_scores(
        np.asarray(prediction),
        np.asarray(label),
        num_classes,
        spacing,
        tolerance_mm=tolerance_mm,
      )
    )
  return CaseResult(case_id=case_id, counts=counts, scores=scores)


def score_examples(
  examples: Iterable[dict[str, Any]],
  predict: Callable[[dict[str, Any]], np.ndarray],
  *,
  num_classes: int,
  surface_metrics: bool = True,
  tolerance_mm: float = 1.0,
  keep_arrays: bool = False,
) -> list[CaseResult]:
  """Predicts and scores whole cases one at a time (`score_case` each).

  Args:
    examples: `pipeline.eval_examples` dicts (`case_id`, `image`,
      `raw_image`, `label`, `spacing`).
    predict: maps an example to its `int[*S]` class ids.
    num_classes: number of classes.
    surface_metrics: add HD95, HD, ASSD and NSD.
    tolerance_mm: NSD tolerance.
    keep_arrays: keep `raw_image`, `label` and the prediction on each
      result (for overlays).
  """
  cases = []
  for example in examples:
    prediction = predict(example)
    case = score_case(
      example["case_id"],
      prediction,
      example["label"],
      num_classes=num_classes,
      spacing=example["spacing"],
      surface_metrics=surface_metrics,
      tolerance_mm=tolerance_mm,
    )
    if keep_arrays:
      case.image = example["raw_image"]
      case.label = example["label"]
      case.prediction = prediction
    cases.append(case)
  return cases


@functools.cache
def _counts_fn(num_classes: int):
  return jax.jit(
    lambda p, y, m: overlap.confusion_counts(p, y, num_classes, mask=m)
  )
