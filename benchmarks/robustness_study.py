r"""Robustness study: plain training against training with MRI artefacts.

  nice -n 10 .venv/bin/python benchmarks/robustness_study.py \
      --datasets=phantoms,isbi --steps=100 --seeds=0,1,2 --severities=1,3,5 \
      --root=workdirs/robustness_study

For each dataset (the 2-D phantom U-Net, ``configs/unet_synthetic.py``, and
the ISBI 2012 U-Net, ``configs/unet_isbi2012.py``), each arm (``plain``:
the config's own augmentations; ``artefacts``: the same plus
``configs/common.ARTEFACT_AUGMENT``) and each seed, it trains the
``runlocal`` config for ``--steps`` steps (the same budget in both arms)
and scores the final checkpoint under every corruption at severities 0-5.
``--gallery`` only draws ``<root>/<dataset>_gallery.png``, one test image
under every corruption and severity.
Each run is what these two commands do (the study runs them in one
process, so that the corruptions compile once):

  python -m medseg_jax.main \
      --config=configs/unet_synthetic.py:runlocal,steps=100,seed=0,augment=artefacts \
      --workdir=workdirs/robustness_study/phantoms_artefacts_seed0 \
      --config.eval_every_steps=100 --config.checkpoint_every_steps=100 \
      --config.eval.surface_metrics=False
  python -m medseg_jax.evaluate \
      --workdir=workdirs/robustness_study/phantoms_artefacts_seed0 \
      --corruptions=all --checkpoint=latest [--severities=1,3,5]

A finished run (its robustness summary exists) is not run again. Writes
``<root>/<dataset>_table.md`` (mean +- std over seeds of the clean Dice
and of ROOD-MRI's overall and degradation figures per corruption, mean
foreground Dice), ``<root>/<dataset>_study.json`` and
``<root>/<dataset>_dice.png`` (Dice against severity per corruption, each
arm's mean over seeds with a +- std band).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASETS = {
  "phantoms": ("configs/unet_synthetic.py", "2-D phantom U-Net"),
  "isbi": ("configs/unet_isbi2012.py", "ISBI 2012 U-Net"),
}
ARMS = ("plain", "artefacts")
ISBI_MANUAL_DIR = "/work/shared/data/isbi2012_em_membrane"


def config_arg(steps: int, seed: int, arm: str) -> str:
  arg = f"runlocal,steps={steps},seed={seed}"
  return arg + (",augment=artefacts" if arm == "artefacts" else "")


def run_one(dataset: str, arm: str, seed: int, args) -> dict:
  from etils import epath  # noqa: PLC0415

  from configs import unet_isbi2012  # noqa: PLC0415
  from configs import unet_synthetic  # noqa: PLC0415
  from medseg_jax import train  # noqa: PLC0415
  from medseg_jax.corruptions import robustness  # noqa: PLC0415

  workdir = pathlib.Path(args.root) / f"{dataset}_{arm}_seed{seed}"
  done = sorted((workdir / "robustness").glob("*_summary.json"))
  if done:
    return json.loads(done[-1].read_text())
  module = {"phantoms": unet_synthetic, "isbi": unet_isbi2012}[dataset]
  config = module.get_config(config_arg(args.steps, seed, arm))
  if dataset == "isbi":
    config.manual_dir = args.isbi_manual_dir
  if args.data_dir:
    config.data_dir = args.data_dir
  config.eval.surface_metrics = False
  # No validation or checkpoint on the way (the final checkpoint is the one
  # scored): the interleaved evaluations would cost more than the training
  # on the study's shared 2-core machine, and do not change the weights.
  config.eval_every_steps = args.steps
  config.checkpoint_every_steps = args.steps
  config.log_every_steps = max(1, args.steps // 4)
  start = time.time()
  train.train_and_evaluate(config, str(workdir))
  trained = time.time() - start
  summary = robustness.evaluate_robustness(
    str(workdir), checkpoint="latest", seed=0, severities=args.severities
  )
  summary["train_seconds"] = trained
  summary["robustness_seconds"] = time.time() - start - trained
  out = sorted((workdir / "robustness").glob("*_summary.json"))[-1]
  epath.Path(out).write_text(json.dumps(summary, indent=2))
  return summary


def aggregate(dataset: str, runs: dict, args) -> str:
  """The markdown table of one dataset; writes the JSON and the plot."""
  import numpy as np  # noqa: PLC0415

  from medseg_jax.corruptions import plots  # noqa: PLC0415

  first = next(iter(runs.values()))[0]
  names = list(first["corruptions"])
  levels = first["severities"]
  column = "mean_foreground"

  def stat(values):
    values = np.asarray(values, float)
    return f"{values.mean():.3f} ± {values.std():.3f}"

  lines = [
    "| corruption | "
    + " | ".join(f"{a}: overall" for a in runs)
    + " | "
    + " | ".join(f"{a}: degradation" for a in runs)
    + " |",
    "|---|" + "---|" * (2 * len(runs)),
  ]
  clean = [stat([r["clean"][column] for r in runs[a]]) for a in runs]
  lines.append("| clean Dice | " + " | ".join(clean) + " |" + " |" * len(runs))
  for name in names:
    overall = [
      stat([r["corruptions"][name][column]["overall"] for r in runs[a]])
      for a in runs
    ]
    degradation = [
      stat([r["corruptions"][name][column]["degradation"] for r in runs[a]])
      for a in runs
    ]
    lines.append(f"| {name} | " + " | ".join(overall + degradation) + " |")
  mean_overall = [
    stat([r["mean_over_corruptions"][column]["overall"] for r in runs[a]])
    for a in runs
  ]
  mean_degradation = [
    stat([r["mean_over_corruptions"][column]["degradation"] for r in runs[a]])
    for a in runs
  ]
  lines.append(
    "| **mean** | " + " | ".join(mean_overall + mean_degradation) + " |"
  )
  curves = {
    arm: {
      name: [
        [r["corruptions"][name][column]["dice"][str(s)] for s in levels]
        for r in runs[arm]
      ]
      for name in names
    }
    for arm in runs
  }
  root = pathlib.Path(args.root)
  figure = plots.compare_runs(
    curves,
    levels,
    title=f"{DATASETS[dataset][1]}: mean foreground Dice against severity "
    f"({len(next(iter(runs.values())))} seeds, {args.steps} steps)",
  )
  figure.savefig(root / f"{dataset}_dice.png", dpi=100)
  (root / f"{dataset}_study.json").write_text(
    json.dumps(
      {
        "steps": args.steps,
        "seeds": args.seeds,
        "curves": curves,
        "runs": {
          arm: [
            {
              "workdir": r["workdir"],
              "clean": r["clean"],
              "mean_over_corruptions": r["mean_over_corruptions"],
              "train_seconds": r.get("train_seconds"),
              "robustness_seconds": r.get("robustness_seconds"),
            }
            for r in runs[arm]
          ]
          for arm in runs
        },
      },
      indent=2,
    )
  )
  table = "\n".join(lines)
  (root / f"{dataset}_table.md").write_text(table + "\n")
  return table


def gallery(dataset: str, args) -> None:
  """``<root>/<dataset>_gallery.png``: the first test case under every
  corruption at severities 0-5 (z-scored, first channel, as the network
  sees it), with the evaluation's keys."""
  import numpy as np  # noqa: PLC0415

  from configs import unet_isbi2012  # noqa: PLC0415
  from configs import unet_synthetic  # noqa: PLC0415
  from medseg_jax import corruptions  # noqa: PLC0415
  from medseg_jax.corruptions import plots  # noqa: PLC0415
  from medseg_jax.corruptions import robustness  # noqa: PLC0415
  from medseg_jax.data import registry as data_registry  # noqa: PLC0415

  module = {"phantoms": unet_synthetic, "isbi": unet_isbi2012}[dataset]
  config = module.get_config("runlocal")
  if dataset == "isbi":
    config.manual_dir = args.isbi_manual_dir
  if args.data_dir:
    config.data_dir = args.data_dir
  data_dir = os.path.expanduser(config.data_dir)
  data_registry.prepare(config.dataset, data_dir, config.get("manual_dir"))
  source = data_registry.data_source(
    config.dataset,
    config.test_split,
    data_dir,
    manual_dir=config.get("manual_dir"),
  )
  raw = np.asarray(source[0]["image"], np.float32)
  levels = [0, *corruptions.SEVERITIES]
  images = {}
  for name in corruptions.NAMES:
    row = []
    for severity in levels:
      image = robustness.make_corrupter(name, severity)(raw, 0)[..., 0]
      row.append((image - image.mean()) / max(float(image.std()), 1e-6))
    images[name] = row
  figure = plots.gallery(
    images, levels, title=f"{DATASETS[dataset][1]}: test case 0"
  )
  figure.savefig(pathlib.Path(args.root) / f"{dataset}_gallery.png", dpi=70)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets", default="phantoms,isbi")
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--severities", default="1,2,3,4,5")
  parser.add_argument("--root", default="workdirs/robustness_study")
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--isbi_manual_dir", default=ISBI_MANUAL_DIR)
  parser.add_argument(
    "--gallery", action="store_true", help="only draw the galleries"
  )
  args = parser.parse_args()
  args.seeds = [int(s) for s in args.seeds.split(",")]
  from medseg_jax import xla_cpu  # noqa: PLC0415

  xla_cpu.configure_flags()
  import jax  # noqa: PLC0415

  # Compiled corruptions and steps survive a restart of the study.
  jax.config.update(
    "jax_compilation_cache_dir", os.path.join(args.root, ".jax_cache")
  )
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  from medseg_jax import console  # noqa: PLC0415

  os.makedirs(args.root, exist_ok=True)
  console.setup(args.root, process_index=0)
  datasets = args.datasets.split(",")
  for dataset in datasets:
    if dataset not in DATASETS:
      raise SystemExit(f"Unknown dataset {dataset!r}; valid: {list(DATASETS)}")
  if "isbi" in datasets and not os.path.isdir(args.isbi_manual_dir):
    print(f"Skipping isbi: no data at {args.isbi_manual_dir}.")
    datasets.remove("isbi")
  if args.gallery:
    for dataset in datasets:
      gallery(dataset, args)
    return
  runs = {d: {arm: [] for arm in ARMS} for d in datasets}
  # Seed by seed, so that an interrupted study has tables for every
  # dataset (over the seeds done so far).
  for seed in args.seeds:
    for dataset in datasets:
      for arm in ARMS:
        print(f"== {dataset} {arm} seed {seed}", flush=True)
        runs[dataset][arm].append(run_one(dataset, arm, seed, args))
      table = aggregate(dataset, runs[dataset], args)
      print(f"\n{DATASETS[dataset][1]}:\n{table}\n", flush=True)


if __name__ == "__main__":
  main()
