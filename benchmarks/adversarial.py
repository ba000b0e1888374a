r"""The with/without-adversarial-term table from the suite's finished runs.

  python -m medseg_jax.benchmark --suite=configs/benchmarks/adversarial.py \
      --root=workdirs/benchmarks          # trains the 12 runs
  python benchmarks/adversarial.py --root=workdirs/benchmarks

For each data set, the supervised U-Net and the same U-Net trained with the
SegAN critic (`medseg_jax/train_adversarial.py`) at the same budget and
seeds: pooled foreground Dice (true positives, false positives and false
negatives summed over all test cases, then Dice; the repository's
`pooled_foreground_dice`) per seed and as mean ± std over seeds, the
per-case mean foreground Dice and HD95 (in the data's spacing unit, mm)
over the test cases of all seeds,
and the paired difference (adversarial - supervised, same seed) of the
pooled Dice. Runs still missing are listed as such.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medseg_jax import benchmark  # noqa: E402

SUITE = "configs/benchmarks/adversarial.py"
ADVERSARIAL_SUFFIX = " + SegAN"


def _summary(workdir: pathlib.Path) -> dict | None:
  reports = sorted(
    (workdir / "eval").glob("*_summary.json"), key=lambda p: p.stat().st_mtime
  )
  return json.loads(reports[-1].read_text()) if reports else None


def _mean_std(values, fmt: str = ".4f") -> str:
  values = [v for v in values if not math.isnan(v)]
  if not values:
    return "n/a"
  return f"{np.mean(values):{fmt}} ± {np.std(values):{fmt}}"


def collect(root: pathlib.Path) -> dict[str, dict]:
  """Per experiment: its seeds' summaries (None where not finished)."""
  suite = benchmark.load_suite(str(REPO / SUITE))
  out = {}
  for experiment in suite.experiments:
    runs = {}
    for seed in experiment.get("seeds", (0,)):
      workdir = root / suite.name / experiment["name"] / f"seed_{seed}"
      runs[seed] = _summary(workdir)
    out[experiment["name"]] = runs
  return out


def table(results: dict[str, dict]) -> str:
  lines = [
    "| data, segmentor | pooled Dice per seed | pooled Dice | "
    "mean Dice (cases) | HD95 (cases) | paired Δ pooled Dice |",
    "|---|---|---|---|---|---|",
  ]
  for name, runs in results.items():
    pooled = [
      s["pooled_foreground_dice"] if s else math.nan for s in runs.values()
    ]
    dice, hd95 = [], []
    for summary in runs.values():
      if summary:
        case_dice, case_hd = benchmark._per_case(summary)  # noqa: SLF001
        dice += case_dice
        hd95 += case_hd
    delta = ""
    if name.endswith(ADVERSARIAL_SUFFIX):
      twin = results.get(name.removesuffix(ADVERSARIAL_SUFFIX), {})
      diffs = [
        runs[seed]["pooled_foreground_dice"]
        - twin[seed]["pooled_foreground_dice"]
        for seed in runs
        if runs[seed] and twin.get(seed)
      ]
      delta = (
        f"{np.mean(diffs):+.4f} ± {np.std(diffs):.4f} (n={len(diffs)})"
        if diffs
        else "n/a"
      )
    per_seed = " / ".join(
      "missing" if math.isnan(p) else f"{p:.4f}" for p in pooled
    )
    lines.append(
      f"| {name} | {per_seed} | {_mean_std(pooled)} | {_mean_std(dice)} | "
      f"{_mean_std(hd95, '.3g')} | {delta} |"
    )
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="workdirs/benchmarks")
  args = parser.parse_args()
  root = pathlib.Path(args.root)
  if not root.is_absolute():
    root = REPO / root
  print(table(collect(root)))


if __name__ == "__main__":
  main()
