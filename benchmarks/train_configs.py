r"""Trains configs end to end and prints a markdown results table.

  .venv/bin/python benchmarks/train_configs.py \
      configs/unet_synthetic.py configs/attention_unet_synthetic.py ...
  .venv/bin/python benchmarks/train_configs.py --root=workdirs/results \
      'configs/transfer_isbi2012.py:pretrained=workdirs/results/unet_synthetic'

Each config runs in its own process (``python -m medseg_jax.main``) with the
work dir ``<root>/<config name>[_<arg>]``; an existing finished work dir is
only re-evaluated (the trainer resumes). The table has the held-out split's
mean Dice per foreground class and overall, the wall time of the run and the
exact command.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def workdir_for(root: pathlib.Path, config: str) -> pathlib.Path:
  path, _, arg = config.partition(":")
  name = pathlib.Path(path).stem
  if arg:
    name += "_" + re.sub(r"[^A-Za-z0-9]+", "_", arg).strip("_")[-40:]
  return root / name


def run(config: str, root: pathlib.Path, extra: list[str]) -> dict:
  workdir = workdir_for(root, config)
  cmd = [
    sys.executable,
    "-m",
    "medseg_jax.main",
    f"--config={config}",
    f"--workdir={workdir}",
    *extra,
  ]
  start = time.time()
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  seconds = time.time() - start
  if result.returncode:
    sys.stderr.write(result.stderr[-4000:])
    return {"config": config, "error": f"exit {result.returncode}"}
  summaries = sorted((workdir / "eval").glob("*_summary.json"))
  summary = json.loads(summaries[-1].read_text())
  return {
    "config": config,
    "workdir": str(workdir),
    "seconds": seconds,
    "summary": summary,
    "command": " ".join(cmd[1:]).replace(sys.executable, "python"),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("configs", nargs="+")
  parser.add_argument("--root", default="workdirs/results")
  parser.add_argument(
    "--extra", default="", help="extra flags for every run, space-separated"
  )
  args = parser.parse_args()
  root = pathlib.Path(args.root)
  rows = []
  for config in args.configs:
    print(f"== {config}", flush=True)
    row = run(config, root, args.extra.split())
    rows.append(row)
    if "error" in row:
      print(f"   failed: {row['error']}", flush=True)
      continue
    summary = row["summary"]
    print(
      f"   {summary['split']}: mean foreground Dice "
      f"{summary['mean_foreground_dice']:.4f} ({row['seconds']:.0f} s)",
      flush=True,
    )
  print()
  print(
    "| config | split | per-class Dice (mean ± std) | mean fg Dice | wall time |"
  )
  print("|---|---|---|---|---|")
  for row in rows:
    if "error" in row:
      print(f"| `{row['config']}` | | failed: {row['error']} | | |")
      continue
    summary = row["summary"]
    classes = list(summary["per_class"])[1:]
    per_class = ", ".join(
      f"{name} {summary['per_class'][name]['dice']['mean']:.3f}"
      f" ± {summary['per_class'][name]['dice']['std']:.3f}"
      for name in classes
    )
    print(
      f"| `{row['config']}` | {summary['split']} ({summary['num_cases']}) "
      f"| {per_class} | **{summary['mean_foreground_dice']:.4f}** "
      f"| {row['seconds'] / 60:.1f} min |"
    )


if __name__ == "__main__":
  main()
