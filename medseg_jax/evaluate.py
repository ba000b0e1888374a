r"""Evaluates a trained run on a split: reports, overlays, summaries.

  python -m medseg_jax.evaluate --config=configs/unet_synthetic.py \
      --workdir=workdirs/demo [--checkpoint=best|latest|STEP] [--split=test]

  # sliding windows, flip TTA, largest component, via the config:
  python -m medseg_jax.evaluate --config=configs/unet3d_lesjak.py \
      --workdir=workdirs/results/unet3d_lesjak --config.eval.sliding_window \
      --config.eval.tta_flip_axes="(0, 1, 2)"

`--split` is `train`, `validation`, `test` (the config's split of that
role, e.g. a cross-validation fold) or any TFDS split string. Writes into
`<workdir>/eval/` (or `--output_dir`): `<name>_per_case.csv` (every score
per case and class), `<name>_summary.json` (mean, std and count per class),
overlay PNGs of the best, median and worst cases, and TensorBoard scalars;
`<name>` is the split and the checkpoint step. Scores: Dice, IoU,
sensitivity, specificity, precision, volume similarity (from confusion
counts on device) and, unless `--config.eval.surface_metrics=False`, HD95,
HD, ASSD and NSD at `config.eval.nsd_tolerance_mm` (host, with the voxel
spacing).
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from medseg_jax import xla_cpu  # noqa: E402


def resolve_split(config, split: str) -> str:
  """Maps a split role to the config's split string."""
  roles = {
    "train": config.train_split,
    "validation": config.eval_split,
    "test": config.test_split,
  }
  return roles.get(split, split)


def evaluate_run(
  config,
  workdir: str,
  *,
  checkpoint: str = "best",
  split: str = "test",
  output_dir: str | None = None,
):
  """Scores one checkpoint of a run on a split; returns the summary dict."""
  import numpy as np  # noqa: PLC0415
  from etils import epath  # noqa: PLC0415

  from medseg_jax import console  # noqa: PLC0415
  from medseg_jax import writers  # noqa: PLC0415
  from medseg_jax.data import pipeline  # noqa: PLC0415
  from medseg_jax.data import registry  # noqa: PLC0415
  from medseg_jax.evaluation import case_predictor  # noqa: PLC0415
  from medseg_jax.evaluation import evaluator  # noqa: PLC0415
  from medseg_jax.evaluation import overlays  # noqa: PLC0415

  data_dir = os.path.expanduser(config.data_dir)
  registry.prepare(config.dataset, data_dir, config.get("manual_dir"))
  trained = case_predictor.load_trained(config, workdir, checkpoint)
  predictor = case_predictor.CasePredictor.from_config(config, trained)
  split_name = resolve_split(config, split)
  options = config.eval
  cases = evaluator.score_examples(
    console.progress(
      pipeline.eval_examples(config, data_dir, split_name, pad_multiple=1),
      desc="evaluate",
      unit="case",
    ),
    lambda example: predictor.predict_label(example["image"]),
    num_classes=trained.spec.num_classes,
    surface_metrics=options.surface_metrics,
    tolerance_mm=options.nsd_tolerance_mm,
    keep_arrays=True,
  )
  if not cases:
    raise ValueError(f"Split {split_name!r} of {config.dataset!r} is empty.")
  result = evaluator.EvalResult(
    class_names=trained.spec.class_names, cases=cases
  )
  out = (
    epath.Path(output_dir)
    if output_dir
    else (epath.Path(os.path.abspath(workdir)) / "eval")
  )
  name = (
    f"{re.sub(r'[^A-Za-z0-9]+', '_', split_name).strip('_')}_step{trained.step}"
  )
  summary = evaluator.write_reports(
    result,
    out,
    name,
    extra={
      "step": trained.step,
      "checkpoint": checkpoint,
      "split_string": split_name,
      "sliding_window": bool(options.sliding_window),
      "tta_flip_axes": list(options.tta_flip_axes),
      "largest_component": bool(options.largest_component),
    },
  )
  dice = np.nanmean(result.score_matrix("dice")[:, 1:], axis=1)
  order = np.argsort(dice)
  picks = []
  for label, index in (
    ("best", order[-1]),
    ("median", order[len(order) // 2]),
    ("worst", order[0]),
  ):
    case = result.cases[index]
    picks.append(
      (
        f"{label}_{case.case_id}",
        case.image,
        case.label,
        case.prediction,
        dice[index],
      )
    )
  overlays.write_overlays(picks, out / f"{name}_overlays")
  writer = writers.create_writer(
    os.fspath(out), config.get("writer", "logging")
  )
  scalars = {
    f"{name}/mean_foreground_dice": summary["mean_foreground_dice"],
    f"{name}/pooled_foreground_dice": summary["pooled_foreground_dice"],
  }
  for class_name, entry in summary["per_class"].items():
    for score, values in entry.items():
      scalars[f"{name}/{score}_{class_name}"] = values["mean"]
  writer.write_scalars(trained.step, scalars)
  writer.flush()
  print(
    f"\nEvaluation of {split_name!r}, checkpoint step {trained.step}:\n"
    f"{evaluator.format_table(result)}\nReports and overlays in {out}"
  )
  return summary


def _define_flags():
  """Flags exist only when run as a program, so tests can import this."""
  config_flags.DEFINE_config_file(
    "config", None, "The run's config file (path.py[:arg])."
  )
  flags.DEFINE_string("workdir", None, "The run's work dir.")
  flags.DEFINE_string("checkpoint", "best", "best, latest, or a step number.")
  flags.DEFINE_string(
    "split", "test", "train, validation, test, or a TFDS split string."
  )
  flags.DEFINE_string("output_dir", None, "Default: <workdir>/eval.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  xla_cpu.configure_flags()  # Before any JAX computation.
  from medseg_jax import console  # noqa: PLC0415

  # The run's log.txt gets this evaluation's log too.
  console.setup(flags.FLAGS.workdir, process_index=0)
  evaluate_run(
    flags.FLAGS.config,
    flags.FLAGS.workdir,
    checkpoint=flags.FLAGS.checkpoint,
    split=flags.FLAGS.split,
    output_dir=flags.FLAGS.output_dir,
  )


if __name__ == "__main__":
  _define_flags()
  app.run(main)
