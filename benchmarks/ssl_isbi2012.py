r"""Pretrained against scratch on few labelled ISBI 2012 slices, one process.

  python benchmarks/ssl_isbi2012.py --root=workdirs/ssl_isbi2012_sweep \
      --labels=2,4,8,24 --seeds=0,1,2 --pretrain_steps=400 --steps=150

1. Self-supervised pretraining (`configs/ssl_isbi2012.py`, Models Genesis
   by default) on the 60 unlabelled slices of
   ``--folder`` (see that config's docstring for how to write it), unless
   ``<root>/pretrain`` already finished.
2. For each seed, each number of labelled slices (slices 0..N-1) and each
   init (``pretrained``: every weight but the head from step 1;
   ``scratch``), `configs/finetune_isbi2012.py` at the same budget;
   a run whose report exists is not run again.
3. The table: pooled membrane Dice (true positives, false positives and
   false negatives summed over the 6 held-out slices 24-29, then Dice) as
   mean ± std over the seeds that finished, and the paired difference
   (pretrained - scratch, same seed). Written to ``<root>/results.md``.

Every run is trained in this one process, one after the other (imports
once; JAX's persistent compilation cache in ``<root>/jax_cache`` spares
recompiling the same step), so that the sweep fits a small CPU budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

INITS = ("pretrained", "scratch")


def _summary(workdir: pathlib.Path) -> dict | None:
  reports = sorted((workdir / "eval").glob("*_summary.json"))
  return json.loads(reports[-1].read_text()) if reports else None


def _mean_std(values) -> str:
  values = [v for v in values if not math.isnan(v)]
  if not values:
    return "n/a"
  return f"{np.mean(values):.4f} ± {np.std(values):.4f} (n={len(values)})"


def table(results: dict, labels, seeds, pretext: str) -> str:
  lines = [
    f"| labelled slices | scratch | pretrained ({pretext}) | "
    "paired Δ (pretrained - scratch) | per seed Δ |",
    "|---|---|---|---|---|",
  ]
  for n in labels:
    cells = {}
    for init in INITS:
      cells[init] = [results.get(f"l{n}_s{s}_{init}", math.nan) for s in seeds]
    deltas = [
      p - s
      for p, s in zip(cells["pretrained"], cells["scratch"], strict=True)
      if not (math.isnan(p) or math.isnan(s))
    ]
    lines.append(
      f"| {n} | {_mean_std(cells['scratch'])} | "
      f"{_mean_std(cells['pretrained'])} | {_mean_std(deltas)} | "
      f"{', '.join(f'{d:+.4f}' for d in deltas)} |"
    )
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--root", default="workdirs/ssl_isbi2012_sweep")
  parser.add_argument("--labels", default="2,4,8,24")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--pretrain_steps", type=int, default=400)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--pretext", default="models_genesis")
  parser.add_argument("--folder", default="workdirs/data/isbi2012_unlabelled")
  parser.add_argument(
    "--manual_dir",
    default="",
    help="The ISBI 2012 folder; default the fine-tuning config's.",
  )
  parser.add_argument("--table_only", action="store_true")
  args = parser.parse_args(argv)
  root = pathlib.Path(args.root).resolve()
  root.mkdir(parents=True, exist_ok=True)
  labels = [int(x) for x in args.labels.split(",")]
  seeds = [int(x) for x in args.seeds.split(",")]

  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir", str(root / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  from configs import finetune_isbi2012  # pylint: disable=g-import-not-at-top
  from configs import ssl_isbi2012  # pylint: disable=g-import-not-at-top
  from medseg_jax import train  # pylint: disable=g-import-not-at-top
  from medseg_jax import train_ssl  # pylint: disable=g-import-not-at-top

  data_dir = os.environ.get("MEDSEG_DATA_DIR", str(root / "tfds"))
  pretrain = root / "pretrain"
  results = {}
  timings = {}
  if not args.table_only:
    if train_ssl.read_metadata(pretrain) is None:
      config = ssl_isbi2012.get_config(
        f"steps={args.pretrain_steps},pretext={args.pretext},"
        f"folder={pathlib.Path(args.folder).resolve()}"
      )
      config.data_dir = data_dir
      config.writer = "logging"
      start = time.time()
      train_ssl.train_and_evaluate(config, str(pretrain))
      timings["pretrain"] = time.time() - start
      print(f"pretraining: {timings['pretrain']:.0f} s", flush=True)
  for seed in seeds:
    for n in labels:
      for init in INITS:
        name = f"l{n}_s{seed}_{init}"
        workdir = root / name
        summary = _summary(workdir)
        if summary is None and not args.table_only:
          config = finetune_isbi2012.get_config(
            f"labels={n},seed={seed},init={init},pretrained={pretrain},"
            f"steps={args.steps}"
          )
          config.data_dir = data_dir
          config.manual_dir = args.manual_dir or config.manual_dir
          config.num_overlays = 0
          start = time.time()
          summary = train.train_and_evaluate(config, str(workdir))
          timings[name] = time.time() - start
          print(
            f"{name}: pooled Dice {summary['pooled_foreground_dice']:.4f} "
            f"in {timings[name]:.0f} s",
            flush=True,
          )
        if summary is not None:
          results[name] = summary["pooled_foreground_dice"]
        (root / "results.json").write_text(
          json.dumps({"results": results, "timings": timings}, indent=2)
        )
  text = table(results, labels, seeds, args.pretext)
  (root / "results.md").write_text(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
