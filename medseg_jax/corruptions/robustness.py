r"""Robustness of a trained run to graded corruptions, scored ROOD-MRI style.

  python -m medseg_jax.evaluate --workdir=RUN --corruptions=all \
      [--severities=1,2,3,4,5] [--corruption_seed=0] [--split=test]

or from Python::

  summary = robustness.evaluate_robustness(
      "workdirs/demo", corruptions="motion,ghosting", severities=(1, 3, 5))
  summary["corruptions"]["motion"]["mean_foreground"]["degradation"]

Every (corruption, severity) is one pass of the one evaluation path
(`evaluation.report.evaluate` with the run's `CasePredictor`), with each
case's image corrupted first. Severity 0 is that same call without a
corruption, i.e. the clean evaluation: its figures are those of
`python -m medseg_jax.evaluate` on the same checkpoint and split.

Where the corruption happens. Each image is corrupted as read from the
dataset, before the run's normalisation, as a scanner would degrade it;
the network then sees the corrupted image normalised exactly as in
training. The corruptions are defined relative to the image's own minimum
and spread (`medseg_jax.corruptions.ops`), so for the affine
normalisations (z-score, min-max) this equals corrupting the normalised
image and normalising again.

Draws. Case ``i`` of the split under corruption ``c`` uses the key
``fold_in(fold_in(key(seed), crc32(c)), i)`` at every severity: the same
noise, axis, movements... only stronger, so a curve against severity
varies through the severity alone.

Scores. Per case and class, the report's scores (Dice, IoU, ...). Per
corruption and class, the mean Dice over cases at each severity ``s``
(``m_s``, ``m_0`` clean) and ROOD-MRI's two summaries (Boone et al. 2023,
``roodmri/metrics/calculate.py``) with weights ``w_s = alpha ** s``,
``alpha = 2/3`` (severe levels count less):

  overall     = (m_0 + sum_s w_s m_s) / (1 + sum_s w_s)
  degradation = sum_s w_s (m_0 - m_s) / sum_s w_s

Overall is a robust Dice (higher is better), degradation the weighted
Dice lost (lower is better). The same for the mean foreground Dice.

Files, in ``<workdir>/robustness/`` (or ``output_dir``), named
``<split>_step<step>``: ``_per_case.csv`` (corruption, severity, case,
class, every score), ``_summary.csv`` (per corruption and class: Dice at
each severity, overall, degradation), ``_summary.json`` (the same, with
the settings) and ``_dice.png`` (Dice against severity, one panel per
foreground class and one for their mean, one line per corruption).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import zlib
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

from medseg_jax.corruptions import registry

ALPHA = 2.0 / 3.0
CLEAN = "clean"


def case_key(seed: int, name: str, index: int) -> jax.Array:
  """The key of case ``index`` under corruption ``name`` (any severity)."""
  key = jax.random.key(seed)
  key = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
  return jax.random.fold_in(key, index)


def make_corrupter(
  name: str, severity: float, seed: int = 0
) -> Callable[[np.ndarray, int], np.ndarray]:
  """``corrupt(image, index) -> image`` for `report.evaluate`: corruption
  ``name`` at ``severity``, jitted (one compilation per image shape), the
  key from :func:`case_key`."""
  registry.get(name)
  apply = _jitted(name, registry.check_severity(severity))

  def corrupt(image: np.ndarray, index: int) -> np.ndarray:
    return np.asarray(apply(case_key(seed, name, index), image))

  return corrupt


@functools.cache
def _jitted(name: str, severity: float):
  # One compiled function per (name, severity), shared by every evaluation
  # of the process (a study evaluates many runs).
  return jax.jit(functools.partial(registry.corrupt, name, severity=severity))


def rood_summary(
  dice: Sequence[float], severities: Sequence[int], alpha: float = ALPHA
) -> tuple[float, float]:
  """ROOD-MRI's ``(overall, degradation)`` of one corruption.

  Args:
    dice: the mean Dice at severity 0 (clean) followed by those at
      ``severities``.
    severities: the graded severities (each > 0), in the order of
      ``dice[1:]``.
    alpha: the severity weighting, ``w_s = alpha ** s``.

  Returns:
    ``overall = (m_0 + sum w_s m_s) / (1 + sum w_s)`` and ``degradation =
    sum w_s (m_0 - m_s) / sum w_s``.
  """
  clean, graded = float(dice[0]), np.asarray(dice[1:], float)
  if len(graded) != len(severities) or not len(severities):
    raise ValueError(
      f"rood_summary: {len(graded)} Dice values for severities "
      f"{tuple(severities)}."
    )
  weights = alpha ** np.asarray(severities, float)
  overall = (clean + np.sum(weights * graded)) / (1 + np.sum(weights))
  degradation = np.sum(weights * (clean - graded)) / np.sum(weights)
  return float(overall), float(degradation)


def parse_severities(text: str | Sequence[int]) -> tuple[int, ...]:
  """``"1,2,3"`` -> ``(1, 2, 3)``: integers in 1-5, sorted, each once (0,
  the clean evaluation, is always included and may be omitted)."""
  if isinstance(text, str):
    parts = [p.strip() for p in text.split(",") if p.strip()]
  else:
    parts = list(text)
  out = set()
  for part in parts:
    try:
      value = int(part)
    except ValueError:
      value = -1
    if not 0 <= value <= registry.MAX_SEVERITY or str(part).strip() != str(
      value
    ):
      raise ValueError(
        f"--severities: {part!r} is not an integer in 0-"
        f"{registry.MAX_SEVERITY}; e.g. --severities=1,2,3,4,5."
      )
    out.add(value)
  out.discard(0)
  if not out:
    raise ValueError("--severities: give at least one of 1-5.")
  return tuple(sorted(out))


def evaluate_robustness(
  workdir: str,
  *,
  corruptions: str | Sequence[str] = "all",
  severities: str | Sequence[int] = registry.SEVERITIES,
  config=None,
  checkpoint: str = "best",
  split: str = "test",
  output_dir: str | None = None,
  seed: int = 0,
  plot: bool = True,
) -> dict[str, Any]:
  """Scores one checkpoint under every (corruption, severity); returns the
  summary (see the module docstring) and writes the files.

  Args:
    workdir: the run.
    corruptions: ``"all"``, ``"motion,ghosting"`` or a sequence of names.
    severities: graded severities (1-5) besides the clean one.
    config: overrides of the run's config, as for ``evaluate.evaluate_run``.
    checkpoint: ``best``, ``latest`` or a step.
    split: a split role (``train``, ``validation``, ``test``) or a TFDS
      split string.
    output_dir: default ``<workdir>/robustness``.
    seed: seeds the corruptions' draws (:func:`case_key`).
    plot: write the Dice-against-severity PNG.
  """
  from medseg_jax.data import registry as data_registry  # noqa: PLC0415
  from medseg_jax.evaluate import resolve_split  # noqa: PLC0415
  from medseg_jax.evaluation import case_predictor  # noqa: PLC0415
  from medseg_jax.evaluation import report  # noqa: PLC0415

  names = registry.resolve(corruptions)
  severities = parse_severities(severities)
  trained = case_predictor.load_trained(workdir, checkpoint, config)
  config = trained.config
  data_dir = os.path.expanduser(config.data_dir)
  data_registry.prepare(config.dataset, data_dir, config.get("manual_dir"))
  predictor = case_predictor.CasePredictor.from_config(
    config, trained.model, trained.variables
  )
  split_name = resolve_split(config, split)
  surface = bool(config.eval.surface_metrics)

  def run(corrupt, desc):
    return report.evaluate(
      config,
      predictor,
      data_dir,
      split_name,
      surface_metrics=surface,
      desc=desc,
      leave=False,
      corrupt=corrupt,
    )

  results = {(CLEAN, 0): run(None, "clean")}
  for name in names:
    for severity in severities:
      corrupt = make_corrupter(name, severity, seed)
      results[name, severity] = run(corrupt, f"{name} {severity}")

  summary = summarise(results, names, severities)
  summary.update(
    workdir=os.path.abspath(workdir),
    step=int(trained.step),
    checkpoint=str(checkpoint),
    split_string=split_name,
    seed=int(seed),
    alpha=ALPHA,
    parameters={
      name: {s: registry.parameters(name, s) for s in severities}
      for name in names
    },
  )
  if jax.process_index() != 0:
    return summary
  out = epath.Path(
    output_dir or os.path.join(os.path.abspath(workdir), "robustness")
  )
  out.mkdir(parents=True, exist_ok=True)
  base = report.report_name(split_name, trained.step)
  (out / f"{base}_per_case.csv").write_text(per_case_csv(results))
  (out / f"{base}_summary.csv").write_text(summary_csv(summary))
  (out / f"{base}_summary.json").write_text(json.dumps(summary, indent=2))
  if plot:
    from medseg_jax.corruptions import plots  # noqa: PLC0415

    figure = plots.dice_against_severity(summary)
    figure.savefig(os.fspath(out / f"{base}_dice.png"), dpi=110)
  console_table = format_table(summary)
  print(
    f"\nRobustness of {split_name!r}, checkpoint step {trained.step} "
    f"({checkpoint}), mean foreground Dice:\n{console_table}\nFiles in "
    f"{out} ({base}_*)",
    flush=True,
  )
  return summary


def summarise(
  results: dict[tuple[str, int], Any],
  names: Sequence[str],
  severities: Sequence[int],
) -> dict[str, Any]:
  """The summary dict of evaluation results keyed ``(corruption,
  severity)``, the clean one under ``("clean", 0)``."""
  clean = results[CLEAN, 0]
  class_names = list(clean.class_names)
  levels = [0, *severities]

  def figures(result) -> dict[str, float]:
    s = result.summary()
    out = {c: s["per_class"][c]["dice"]["mean"] for c in class_names}
    out["mean_foreground"] = s["mean_foreground_dice"]
    return out

  clean_figures = figures(clean)
  table: dict[str, Any] = {}
  for name in names:
    per_level = [clean_figures] + [
      figures(results[name, s]) for s in severities
    ]
    entry = {}
    for column in [*class_names, "mean_foreground"]:
      dice = [f[column] for f in per_level]
      overall, degradation = rood_summary(dice, severities)
      entry[column] = {
        "dice": dict(zip(map(str, levels), dice, strict=True)),
        "overall": overall,
        "degradation": degradation,
      }
    table[name] = entry
  mean = {}
  for column in [*class_names, "mean_foreground"]:
    mean[column] = {
      key: float(np.mean([table[n][column][key] for n in names]))
      for key in ("overall", "degradation")
    }
  return {
    "class_names": class_names,
    "severities": levels,
    "num_cases": len(clean.cases),
    "clean": clean_figures,
    "clean_summary": clean.summary(),
    "corruptions": table,
    "mean_over_corruptions": mean,
  }


def per_case_csv(results: dict[tuple[str, int], Any]) -> str:
  """Rows ``corruption, severity, case_id, class, <scores>``; the clean
  evaluation is ``clean, 0``."""
  clean = results[CLEAN, 0]
  scores = list(clean.score_names)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["corruption", "severity", "case_id", "class", *scores])
  for (name, severity), result in results.items():
    for case in result.cases:
      for c, class_name in enumerate(result.class_names):
        writer.writerow(
          [name, severity, case.case_id, class_name]
          + [repr(float(case.scores[s][c])) for s in scores]
        )
  return buffer.getvalue()


def summary_csv(summary: dict[str, Any]) -> str:
  """Rows ``corruption, class, dice_s0..., overall, degradation``."""
  levels = summary["severities"]
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(
    ["corruption", "class"]
    + [f"dice_s{s}" for s in levels]
    + ["overall", "degradation"]
  )
  for name, entry in summary["corruptions"].items():
    for column, values in entry.items():
      writer.writerow(
        [name, column]
        + [f"{values['dice'][str(s)]:.6f}" for s in levels]
        + [f"{values['overall']:.6f}", f"{values['degradation']:.6f}"]
      )
  for column, values in summary["mean_over_corruptions"].items():
    writer.writerow(
      ["mean", column]
      + [""] * len(levels)
      + [f"{values['overall']:.6f}", f"{values['degradation']:.6f}"]
    )
  return buffer.getvalue()


def format_table(summary: dict[str, Any], column: str = "mean_foreground"):
  """A fixed-width table of one column (default the mean foreground Dice):
  Dice per severity, overall and degradation per corruption."""
  levels = summary["severities"]
  head = f"{'corruption':<22}" + "".join(f"{'s' + str(s):>7}" for s in levels)
  head += f"{'overall':>9}{'degr.':>8}"
  lines = [head, "-" * len(head)]
  for name, entry in summary["corruptions"].items():
    values = entry[column]
    lines.append(
      f"{name:<22}"
      + "".join(f"{values['dice'][str(s)]:>7.3f}" for s in levels)
      + f"{values['overall']:>9.3f}{values['degradation']:>8.3f}"
    )
  mean = summary["mean_over_corruptions"][column]
  lines.append(
    f"{'mean':<22}"
    + " " * 7 * len(levels)
    + f"{mean['overall']:>9.3f}{mean['degradation']:>8.3f}"
  )
  return "\n".join(lines)
