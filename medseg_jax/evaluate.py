r"""Evaluates a trained run on a split: reports, overlays, summaries.

  python -m medseg_jax.evaluate --workdir=workdirs/demo \
      [--checkpoint=best|latest|STEP] [--split=test]

  # sliding windows, flip TTA, largest component: overrides of the run's
  # saved config (WORKDIR/config.json)
  python -m medseg_jax.evaluate --workdir=workdirs/results/unet3d_lesjak \
      --config.eval.sliding_window --config.eval.tta_flip_axes="(0, 1, 2)"

  # a whole config file instead (its model and dataset must be the run's)
  python -m medseg_jax.evaluate --workdir=workdirs/demo \
      --config=configs/unet_synthetic.py

  # robustness: every graded corruption at severities 1-5, plus clean
  python -m medseg_jax.evaluate --workdir=workdirs/demo --corruptions=all \
      [--severities=1,2,3,4,5] [--corruption_seed=0]

It scores through the same predictor and report code as the trainer's
final test report (`evaluation.report`), so the same checkpoint and options
give the same files.

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

With `--corruptions` (`all` or names of `medseg_jax.corruptions`) it scores
the checkpoint under each corruption at each severity instead, through the
same path, and writes into `<workdir>/robustness/` (or `--output_dir`) a
per-case CSV, a summary CSV and JSON with ROOD-MRI's overall and
degradation figures, and a Dice-against-severity PNG; see
`medseg_jax.corruptions.robustness` and docs/robustness.md.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

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
  workdir: str,
  *,
  config=None,
  checkpoint: str = "best",
  split: str = "test",
  output_dir: str | None = None,
):
  """Scores one checkpoint of a run on a split; returns the summary dict.

  `config` (default: the run's `config.json`) may change anything but the
  model and dataset, e.g. `eval` options or `data_dir`.
  """
  from etils import epath  # noqa: PLC0415

  from medseg_jax import writers  # noqa: PLC0415
  from medseg_jax.data import registry  # noqa: PLC0415
  from medseg_jax.evaluation import case_predictor  # noqa: PLC0415
  from medseg_jax.evaluation import report  # noqa: PLC0415

  trained = case_predictor.load_trained(workdir, checkpoint, config)
  config = trained.config
  data_dir = os.path.expanduser(config.data_dir)
  registry.prepare(config.dataset, data_dir, config.get("manual_dir"))
  predictor = case_predictor.CasePredictor.from_config(
    config, trained.model, trained.variables
  )
  split_name = resolve_split(config, split)
  result = report.evaluate(
    config,
    predictor,
    data_dir,
    split_name,
    surface_metrics=bool(config.eval.surface_metrics),
    keep_arrays=True,
  )
  out = epath.Path(output_dir or os.path.join(os.path.abspath(workdir), "eval"))
  out.mkdir(parents=True, exist_ok=True)
  writer = writers.create_writer(
    os.fspath(out), config.get("writer", "logging")
  )
  return report.write(
    config,
    result,
    out,
    split=split_name,
    step=trained.step,
    checkpoint=checkpoint,
    writer=writer,
  )


def _define_flags(argv):
  """Flags exist only when run as a program, so tests can import this."""
  from medseg_jax import run_config  # noqa: PLC0415

  run_config.define_config_flag(argv)
  flags.DEFINE_string("workdir", None, "The run's work dir.")
  flags.DEFINE_string("checkpoint", "best", "best, latest, or a step number.")
  flags.DEFINE_string(
    "split", "test", "train, validation, test, or a TFDS split string."
  )
  flags.DEFINE_string(
    "output_dir", None, "Default: <workdir>/eval (<workdir>/robustness)."
  )
  flags.DEFINE_string(
    "corruptions",
    None,
    "Robustness evaluation: 'all' or a comma-separated list of "
    "medseg_jax.corruptions names.",
  )
  flags.DEFINE_string(
    "severities", "1,2,3,4,5", "With --corruptions: severities in 1-5."
  )
  flags.DEFINE_integer(
    "corruption_seed", 0, "With --corruptions: seeds the corruptions."
  )
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  xla_cpu.configure_for(flags.FLAGS.config)  # Before any JAX computation.
  from medseg_jax import console  # noqa: PLC0415

  # The run's log.txt gets this evaluation's log too.
  console.setup(flags.FLAGS.workdir, process_index=0)
  if flags.FLAGS.corruptions:
    from medseg_jax.corruptions import robustness  # noqa: PLC0415

    robustness.evaluate_robustness(
      flags.FLAGS.workdir,
      corruptions=flags.FLAGS.corruptions,
      severities=flags.FLAGS.severities,
      config=flags.FLAGS.config,
      checkpoint=flags.FLAGS.checkpoint,
      split=flags.FLAGS.split,
      output_dir=flags.FLAGS.output_dir,
      seed=flags.FLAGS.corruption_seed,
    )
    return
  evaluate_run(
    flags.FLAGS.workdir,
    config=flags.FLAGS.config,
    checkpoint=flags.FLAGS.checkpoint,
    split=flags.FLAGS.split,
    output_dir=flags.FLAGS.output_dir,
  )


if __name__ == "__main__":
  _define_flags(sys.argv)
  app.run(main)
