r"""Runs a suite of experiments and writes one comparison table.

  python -m medseg_jax.benchmark --suite=configs/benchmarks/zoo_synthetic2d.py \
      --root=workdirs/benchmarks

A suite file defines `get_suite()` returning a ConfigDict with

  name:         the suite's name (its folder under `--root`).
  split:        the held-out split the table reports (default "test").
  experiments:  [dict(name=..., config="configs/x.py:arg=...",
                      overrides={"num_train_steps": 600}, seeds=(0, 1))]
                deep models, each trained by `python -m medseg_jax.main` in
                its own process per seed, work dir
                `<root>/<suite>/<name>/seed_<s>`. A finished run is not
                trained again: its last report is read (with
                `--noreuse_finished` the trainer resumes and re-evaluates).
  pools:        [dict(name=..., members=[method names])] (optional): one
                more row per pool over the members' held-out cases, e.g.
                the k folds of a cross-validation.
  baselines:    [dict(name=..., method="otsu", config="configs/x.py",
                      kwargs={...}, overrides={"test_split": "test[:8]"})]
                classical methods (`medseg_jax.baselines`), fitted on the
                config's training split and scored on the same split with
                the same metrics, in this process.

Outputs in `<root>/<suite>/`: `results.csv` and `results.md` (one row per
method: mean foreground Dice and HD95 as mean ± std over all held-out cases
of all seeds, the per-seed means, training time, parameter count) and
`dice.png`, a bar plot of the mean foreground Dice with its std.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import math
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import app
from absl import flags

from medseg_jax import xla_cpu

REPO = pathlib.Path(__file__).resolve().parents[1]
# `XLA_FLAGS` as it was before `main` added this process's own CPU flags
# (2-D); the runs start with it, so that each chooses the flags of its
# config (a 3-D run gets the 3-D ones). None: leave the runs' alone.
_XLA_FLAGS_BEFORE: list[str | None] = []


def _run_env() -> dict[str, str]:
  env = dict(os.environ)
  if _XLA_FLAGS_BEFORE:
    env.pop("XLA_FLAGS", None)
    if _XLA_FLAGS_BEFORE[0] is not None:
      env["XLA_FLAGS"] = _XLA_FLAGS_BEFORE[0]
  return env


_SUITE = flags.DEFINE_string("suite", None, "Path to a suite file.")
_ROOT = flags.DEFINE_string(
  "root", "workdirs/benchmarks", "Where the suite's runs and tables go."
)
_ONLY = flags.DEFINE_list("only", [], "Run only these experiment names.")
_KEEP_GOING = flags.DEFINE_bool(
  "keep_going",
  False,
  "Report a failed experiment and go on with the next; pools then cover "
  "the members that ran, and say how many.",
)
_DRY_RUN = flags.DEFINE_bool(
  "dry_run", False, "Print the commands; train nothing."
)
_REUSE = flags.DEFINE_bool(
  "reuse_finished",
  True,
  "Read a finished run's last report instead of starting its trainer "
  "again (which would only re-evaluate it). A run counts as finished when "
  "its saved config has the suite's overrides, it holds the checkpoint of "
  "its last step and a report written after it. --noreuse_finished "
  "re-evaluates every run (after a change to the evaluation).",
)


@dataclasses.dataclass
class Row:
  """One method's results over its seeds."""

  name: str
  kind: str  # "model" or "baseline"
  dice: list[float]  # Per case (all seeds): mean foreground Dice.
  hd95: list[float]  # Per case (all seeds): mean foreground HD95, mm.
  seed_dice: list[float]  # Per seed: mean over cases.
  train_seconds: float
  params: int | None
  command: str
  # Per foreground class name: Dice per case (all seeds). Empty for a
  # single foreground class, whose Dice is `dice`.
  class_dice: dict[str, list[float]] = dataclasses.field(default_factory=dict)

  def stats(self, values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
      return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite))


def load_suite(path: str) -> ml_collections.ConfigDict:
  """Imports a suite file and validates its fields."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"Suite file {path} does not exist.")
  spec = importlib.util.spec_from_file_location(f"suite_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(REPO))
  spec.loader.exec_module(module)
  if not hasattr(module, "get_suite"):
    raise ValueError(f"{path} defines no get_suite().")
  fields = {"split": "test", "baselines": [], "pools": [], **module.get_suite()}
  for key in ("name", "experiments"):
    if key not in fields:
      raise ValueError(f"Suite {path} lacks {key!r}.")
  suite = ml_collections.ConfigDict(fields)
  names = [e["name"] for e in suite.experiments] + [
    b["name"] for b in suite.baselines
  ]
  if len(set(names)) != len(names):
    raise ValueError(f"Suite {path} repeats a method name: {names}.")
  for pool in suite.pools:
    unknown = [m for m in pool["members"] if m not in names]
    if unknown:
      raise ValueError(
        f"Pool {pool['name']!r} of suite {path} names unknown methods "
        f"{unknown}; valid: {names}."
      )
  return suite


def pool_rows(rows: Sequence[Row], name: str, members: Sequence[str]) -> Row:
  """One row over the held-out cases of several rows (e.g. k folds).

  Cases are concatenated (each fold's held-out cases are disjoint), per-seed
  means are listed member by member, and training times add up.
  """
  chosen = [r for r in rows if r.name in members]
  if not chosen:
    raise ValueError(f"Pool {name!r}: none of {list(members)} ran.")
  if len(chosen) < len(members):  # Only with --keep_going or --only.
    name = f"{name} ({len(chosen)} of {len(members)} ran)"
  params = {r.params for r in chosen}
  return Row(
    name=name,
    kind=chosen[0].kind,
    dice=[d for r in chosen for d in r.dice],
    hd95=[h for r in chosen for h in r.hd95],
    seed_dice=[d for r in chosen for d in r.seed_dice],
    train_seconds=sum(r.train_seconds for r in chosen),
    params=params.pop() if len(params) == 1 else None,
    command="pooled: " + ", ".join(r.name for r in chosen),
    class_dice={
      c: [d for r in chosen for d in r.class_dice[c]]
      for c in chosen[0].class_dice
      if all(c in r.class_dice for r in chosen)
    },
  )


def _flag_value(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    inner = ", ".join(map(str, value)) + ("," if len(value) == 1 else "")
    return f"({inner})"
  return str(value)


def _lookup(config: dict[str, Any], key: str) -> Any:
  for part in key.split("."):
    if not isinstance(config, dict) or part not in config:
      return None
    config = config[part]
  return config


def _normalise(value: Any) -> Any:
  if isinstance(value, (tuple, list)):
    return [_normalise(v) for v in value]
  return value


def finished_report(
  workdir: pathlib.Path, overrides: dict[str, Any]
) -> pathlib.Path | None:
  """The last report of a run that finished with these overrides, or None.

  None unless `workdir/config.json` holds every override's value, the
  checkpoint of step `num_train_steps` exists and an evaluation report was
  written after it.
  """
  try:
    saved = json.loads((workdir / "config.json").read_text())
  except (OSError, ValueError):
    return None
  for key, value in overrides.items():
    if _normalise(_lookup(saved, key)) != _normalise(value):
      return None
  last = workdir / "checkpoints" / str(saved.get("num_train_steps"))
  if not last.is_dir():
    return None
  reports = sorted(
    (workdir / "eval").glob("*_summary.json"), key=lambda p: p.stat().st_mtime
  )
  if not reports or reports[-1].stat().st_mtime < last.stat().st_mtime:
    return None
  return reports[-1]


def run_experiment(
  experiment: dict[str, Any],
  root: pathlib.Path,
  dry_run: bool,
  reuse: bool = True,
) -> Row:
  """Trains (or resumes) every seed of one experiment; reads its reports.

  The table uses each run's final report, on its config's `test_split`.
  """
  dice, hd95, seed_dice, seconds, params, command = [], [], [], 0.0, None, ""
  class_dice: dict[str, list[float]] = {}
  for seed in experiment.get("seeds", (0,)):
    workdir = root / experiment["name"] / f"seed_{seed}"
    overrides = {"seed": seed, **dict(experiment.get("overrides", {}))}
    cmd = [
      sys.executable,
      "-m",
      "medseg_jax.main",
      f"--config={experiment['config']}",
      f"--workdir={workdir}",
      *[f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()],
    ]
    command = " ".join(["python", *cmd[1:]])
    print(command, flush=True)
    if dry_run:
      continue
    start = time.time()
    report = finished_report(workdir, overrides) if reuse else None
    if report is not None:
      print(f"  finished; reading {report.name}", flush=True)
    else:
      result = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env=_run_env()
      )
      if result.returncode:
        raise RuntimeError(
          f"{experiment['name']} seed {seed} failed (exit "
          f"{result.returncode}):\n{result.stderr[-3000:]}"
        )
      # The trainer's final report of its best checkpoint on `test_split`.
      reports = sorted(
        (workdir / "eval").glob("*_summary.json"),
        key=lambda p: p.stat().st_mtime,
      )
      if not reports:
        raise FileNotFoundError(f"No evaluation report in {workdir / 'eval'}.")
      report = reports[-1]
    summary = json.loads(report.read_text())
    case_dice, case_hd = _per_case(summary)
    for name, values in _per_class_dice(summary).items():
      class_dice.setdefault(name, []).extend(values)
    dice += case_dice
    hd95 += case_hd
    seed_dice.append(summary["mean_foreground_dice"])
    seconds += _train_seconds(workdir) or (time.time() - start)
    params = _param_count(workdir)
  return Row(
    name=experiment["name"],
    kind="model",
    dice=dice,
    hd95=hd95,
    seed_dice=seed_dice,
    train_seconds=seconds,
    params=params,
    command=command,
    class_dice=class_dice if len(class_dice) > 1 else {},
  )


def _per_class_dice(summary: dict[str, Any]) -> dict[str, list[float]]:
  """Foreground class name -> Dice per case."""
  out: dict[str, list[float]] = {}
  for scores in summary["per_case"].values():
    for name in list(scores)[1:]:  # Class 0 is background.
      out.setdefault(name, []).append(scores[name]["dice"])
  return out


def _per_case(summary: dict[str, Any]) -> tuple[list[float], list[float]]:
  """Mean over foreground classes of Dice and HD95, per case."""
  dice, hd95 = [], []
  for scores in summary["per_case"].values():
    names = list(scores)[1:]  # Class 0 is background.
    dice.append(_nanmean([scores[n]["dice"] for n in names]))
    hd95.append(_nanmean([scores[n].get("hd95", math.nan) for n in names]))
  return dice, hd95


def _nanmean(values: Sequence[float]) -> float:
  finite = [v for v in values if v is not None and not math.isnan(v)]
  return float(np.mean(finite)) if finite else math.nan


def _train_seconds(workdir: pathlib.Path) -> float | None:
  """The trainer's own uptime at its last log line."""
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    return None
  uptime = None
  for line in path.read_text().splitlines():
    record = json.loads(line)
    if "uptime" in record:
      uptime = float(record["uptime"])
  return uptime


def _param_count(workdir: pathlib.Path) -> int:
  from medseg_jax import checkpointing  # noqa: PLC0415

  params, _ = checkpointing.load_params(str(workdir), "latest")
  import jax  # noqa: PLC0415

  return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def run_baseline(baseline: dict[str, Any], split: str) -> Row:
  """Fits a classical method on the training split; scores `split`."""
  from medseg_jax import baselines  # noqa: PLC0415
  from medseg_jax.data import pipeline  # noqa: PLC0415
  from medseg_jax.data import registry  # noqa: PLC0415
  from medseg_jax.evaluation import evaluator  # noqa: PLC0415

  config = _load_config(baseline["config"])
  for key, value in dict(baseline.get("overrides", {})).items():
    _set(config, key, value)
  spec = registry.get_dataset_spec(config.dataset, config.manual_dir)
  data_dir = os.path.expanduser(config.data_dir)
  registry.prepare(config.dataset, data_dir, config.manual_dir)
  method = baselines.get_baseline(
    baseline["method"],
    num_classes=spec.num_classes,
    **dict(baseline.get("kwargs", {})),
  )
  start = time.time()
  train = registry.data_source(
    config.dataset, config.train_split, data_dir, config.manual_dir
  )
  limit = baseline.get("fit_cases", 32)
  images = [
    np.asarray(train[i]["image"]) for i in range(min(limit, len(train)))
  ]
  labels = [np.asarray(train[i]["label"]) for i in range(len(images))]
  method.fit(images, labels)
  fit_seconds = time.time() - start
  held_out = getattr(config, f"{split}_split", split)
  cases = evaluator.score_examples(
    pipeline.eval_examples(config, data_dir, held_out, pad_multiple=1),
    lambda example: method.predict(example["raw_image"]),
    num_classes=spec.num_classes,
  )
  dice = [_nanmean(case.scores["dice"][1:].tolist()) for case in cases]
  hd95 = [_nanmean(case.scores["hd95"][1:].tolist()) for case in cases]
  class_dice = {
    name: [float(case.scores["dice"][c]) for case in cases]
    for c, name in enumerate(spec.class_names)
    if c
  }
  return Row(
    name=baseline["name"],
    kind="baseline",
    dice=dice,
    hd95=hd95,
    seed_dice=[_nanmean(dice)],
    train_seconds=fit_seconds,
    params=None,
    command=f"baseline {baseline['method']} on {baseline['config']}",
    class_dice=class_dice if len(class_dice) > 1 else {},
  )


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  *parents, leaf = key.split(".")
  for parent in parents:
    config = config[parent]
  config[leaf] = value


def _load_config(spec: str) -> ml_collections.ConfigDict:
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(
    f"config_{pathlib.Path(path).stem}", REPO / path
  )
  module = importlib.util.module_from_spec(module_spec)
  sys.path.insert(0, str(REPO))
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def write_tables(rows: Sequence[Row], directory: pathlib.Path) -> str:
  """Writes results.csv, results.md and dice.png; returns the markdown."""
  directory.mkdir(parents=True, exist_ok=True)
  fields = [
    "method",
    "kind",
    "cases",
    "seeds",
    "dice_mean",
    "dice_std",
    "hd95_mean_mm",
    "hd95_std_mm",
    "dice_per_seed",
    "train_seconds",
    "params",
    "command",
  ]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=fields)
  writer.writeheader()
  lines = [
    "| method | Dice (mean ± std) | HD95 mm (mean ± std) | Dice per seed | "
    "train time | parameters |",
    "|---|---|---|---|---|---|",
  ]
  for row in rows:
    dice_mean, dice_std = row.stats(row.dice)
    hd_mean, hd_std = row.stats(row.hd95)
    per_seed = " / ".join(f"{d:.3f}" for d in row.seed_dice)
    writer.writerow(
      {
        "method": row.name,
        "kind": row.kind,
        "cases": len(row.dice),
        "seeds": len(row.seed_dice),
        "dice_mean": dice_mean,
        "dice_std": dice_std,
        "hd95_mean_mm": hd_mean,
        "hd95_std_mm": hd_std,
        "dice_per_seed": per_seed,
        "train_seconds": round(row.train_seconds, 1),
        "params": row.params if row.params is not None else "",
        "command": row.command,
      }
    )
    params = f"{row.params:,}" if row.params is not None else "-"
    lines.append(
      f"| {row.name} | {dice_mean:.3f} ± {dice_std:.3f} | "
      f"{_mm(hd_mean)} ± {_mm(hd_std)} | {per_seed} | "
      f"{row.train_seconds / 60:.1f} min | {params} |"
    )
  _atomic_write(directory / "results.csv", buffer.getvalue())
  markdown = "\n".join(lines) + "\n"
  _atomic_write(directory / "results.md", markdown)
  per_class = per_class_table(rows)
  if per_class:
    _atomic_write(directory / "results_per_class.md", per_class)
    markdown += "\nDice per class (mean ± std over cases):\n\n" + per_class
  bar_plot(rows, directory / "dice.png")
  return markdown


def per_class_table(rows: Sequence[Row]) -> str:
  """A markdown table of Dice per foreground class, for the rows that have
  several classes (empty when none has)."""
  classes: list[str] = []
  for row in rows:
    classes += [c for c in row.class_dice if c not in classes]
  if not classes:
    return ""
  lines = [
    "| method | " + " | ".join(classes) + " |",
    "|---|" + "---|" * len(classes),
  ]
  for row in rows:
    if not row.class_dice:
      continue
    cells = []
    for name in classes:
      mean, std = row.stats(row.class_dice.get(name, []))
      cells.append(f"{mean:.3f} ± {std:.3f}")
    lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _mm(value: float) -> str:
  """Two decimals, or three significant digits for sub-0.01 distances
  (microscopy spacings are nanometres, i.e. about 1e-6 mm)."""
  if math.isfinite(value) and 0 < abs(value) < 0.01:
    return f"{value:.2e}"
  return f"{value:.2f}"


def _atomic_write(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def bar_plot(rows: Sequence[Row], path: pathlib.Path) -> None:
  """Horizontal bars of mean foreground Dice with ±std whiskers (Pillow)."""
  from PIL import Image  # noqa: PLC0415
  from PIL import ImageDraw  # noqa: PLC0415

  label_w, bar_w, row_h, pad = 220, 480, 28, 16
  height = pad * 3 + row_h * len(rows)
  image = Image.new("RGB", (label_w + bar_w + 2 * pad + 60, height), "white")
  draw = ImageDraw.Draw(image)
  x0 = pad + label_w
  draw.text((x0, 4), "mean foreground Dice (0 to 1), ±std", fill="black")
  for i, row in enumerate(rows):
    mean, std = row.stats(row.dice)
    y = pad * 2 + i * row_h
    draw.text((pad, y + 6), row.name[:34], fill="black")
    if math.isnan(mean):
      continue
    colour = (70, 110, 180) if row.kind == "model" else (200, 130, 60)
    draw.rectangle((x0, y + 4, x0 + mean * bar_w, y + row_h - 4), fill=colour)
    low, high = max(mean - std, 0.0), min(mean + std, 1.0)
    mid = y + row_h // 2
    draw.line((x0 + low * bar_w, mid, x0 + high * bar_w, mid), fill="black")
    draw.text((x0 + bar_w + 8, y + 6), f"{mean:.3f}", fill="black")
  draw.line((x0, pad * 2, x0, height - pad), fill="black")
  tmp = path.with_name(path.name + ".tmp.png")
  image.save(tmp)
  tmp.replace(path)


def main(argv: Sequence[str]) -> None:
  del argv
  _XLA_FLAGS_BEFORE[:] = [os.environ.get("XLA_FLAGS")]
  xla_cpu.configure_flags()  # Before any JAX computation.
  if not _SUITE.value:
    raise app.UsageError("--suite=configs/benchmarks/<name>.py is required.")
  suite = load_suite(_SUITE.value)
  root = (REPO / _ROOT.value / suite.name).resolve()
  from medseg_jax import console  # noqa: PLC0415

  console.setup(None if _DRY_RUN.value else root, process_index=0)
  rows = []
  for experiment in suite.experiments:
    if _ONLY.value and experiment["name"] not in _ONLY.value:
      continue
    try:
      rows.append(
        run_experiment(experiment, root, _DRY_RUN.value, _REUSE.value)
      )
    except (RuntimeError, FileNotFoundError) as error:
      if not _KEEP_GOING.value:
        raise
      print(f"FAILED (--keep_going): {error}", flush=True)
  if _DRY_RUN.value:
    return
  for baseline in suite.baselines:
    if _ONLY.value and baseline["name"] not in _ONLY.value:
      continue
    rows.append(run_baseline(baseline, suite.split))
  for pool in suite.pools:
    if not any(r.name in pool["members"] for r in rows):
      continue  # None of its members was asked for (--only) or ran.
    rows.append(pool_rows(rows, pool["name"], pool["members"]))
  markdown = write_tables(rows, root)
  print(markdown)
  print(f"Tables and plot in {root}")


if __name__ == "__main__":
  app.run(main)
