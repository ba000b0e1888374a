r"""Classical baselines on ISBI 2012 and the synthetic 2-D phantoms.

  .venv/bin/python benchmarks/baselines.py
  .venv/bin/python benchmarks/baselines.py --datasets=isbi --sigma=1

For each dataset and each registered baseline (`medseg_jax.baselines`):
the cluster -> class mapping is fitted on the training split (majority
label per cluster, `fit_mapping=True`), then every case of the evaluation
split is segmented and scored with `medseg_jax.metrics.overlap`. Prints,
per dataset, a markdown table of the per-class Dice (mean and std over
cases, empty-set policy of `metrics.overlap`), the mean foreground Dice and
the wall time of fitting and of predicting.

* ISBI 2012 (`isbi2012_em`): 24 training slices, the 6 validation slices
  (24-29) evaluated; classes cell_interior, membrane. Prepared from
  `--isbi_dir` on first use.
* Synthetic 2-D phantoms (`synthetic_phantoms/2d`): 256 training images,
  the 64 test images evaluated; classes background, organ, lesion, vessel.

`active_contour` separates two phases only; it runs with two clusters,
mapped to classes by the fitted mapping like the others.
"""

from __future__ import annotations

import pathlib
import sys
import time
import warnings

import numpy as np
from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_DATASETS = flags.DEFINE_list("datasets", ["isbi", "synthetic2d"], "Datasets.")
_METHODS = flags.DEFINE_list("methods", [], "Baselines; empty for all.")
_SIGMA = flags.DEFINE_float("sigma", 0.0, "Gaussian pre-smoothing, voxels.")
_NUM_CLUSTERS = flags.DEFINE_integer(
  "num_clusters", 0, "Intensity clusters; 0 = the number of classes."
)
_NBINS = flags.DEFINE_integer(
  "nbins", 256, "Otsu histogram bins (use 64 for 5 or more clusters)."
)
_MAX_TRAIN = flags.DEFINE_integer(
  "max_train_cases", 0, "Fit on at most this many training cases; 0 = all."
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir", str(REPO / "data_cache" / "tensorflow_datasets"), "TFDS dir."
)
_ISBI_DIR = flags.DEFINE_string(
  "isbi_dir",
  str(REPO.parent / "shared" / "data" / "isbi2012_em_membrane"),
  "ISBI 2012 manual dir.",
)

# name -> (registry name, training split, evaluation split)
_SPLITS = {
  "isbi": ("isbi2012_em", "train", "validation"),
  "synthetic2d": ("synthetic_phantoms/2d", "train", "test"),
}


def _load(name: str, split: str, limit: int = 0):
  from medseg_jax.data import registry  # pylint: disable=g-import-not-at-top

  source = registry.data_source(name, split, _DATA_DIR.value)
  count = len(source) if limit <= 0 else min(limit, len(source))
  examples = [source[i] for i in range(count)]
  return [e["image"] for e in examples], [e["label"] for e in examples]


def _dice(pred: np.ndarray, label: np.ndarray, num_classes: int):
  from medseg_jax.metrics import overlap  # pylint: disable=g-import-not-at-top

  counts = overlap.confusion_counts(pred[None], label[None], num_classes)
  counts = {k: np.asarray(v) for k, v in counts.items()}
  return overlap.scores_from_counts(counts)["dice"][0]


def _run(dataset: str) -> str:
  from medseg_jax import baselines  # pylint: disable=g-import-not-at-top
  from medseg_jax.data import registry  # pylint: disable=g-import-not-at-top

  name, train_split, eval_split = _SPLITS[dataset]
  manual_dir = _ISBI_DIR.value if dataset == "isbi" else None
  registry.prepare(name, _DATA_DIR.value, manual_dir=manual_dir)
  spec = registry.get_dataset_spec(name)
  train_images, train_labels = _load(name, train_split, _MAX_TRAIN.value)
  eval_images, eval_labels = _load(name, eval_split)
  classes = spec.class_names
  header = (
    f"### {name}: fit on {train_split} ({len(train_images)} cases), "
    f"Dice on {eval_split} ({len(eval_images)} cases), sigma="
    f"{_SIGMA.value}, num_clusters={_NUM_CLUSTERS.value or 'num_classes'}"
    "\n\n"
    "| method | "
    + " | ".join(classes)
    + " | mean fg | fit s | predict s/case | mapping |\n"
    + "|---" * (len(classes) + 5)
    + "|\n"
  )
  rows = []
  for method in _METHODS.value or list(baselines.BASELINES):
    kwargs = dict(
      num_classes=spec.num_classes,
      fit_mapping=True,
      sigma=_SIGMA.value,
      nbins=_NBINS.value,
    )
    if method == "active_contour":
      kwargs["num_clusters"] = 2
    elif _NUM_CLUSTERS.value:
      kwargs["num_clusters"] = _NUM_CLUSTERS.value
    model = baselines.get_baseline(method, **kwargs)
    start = time.perf_counter()
    model.fit(train_images, train_labels)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    preds = [model.predict(image) for image in eval_images]
    predict_seconds = (time.perf_counter() - start) / len(eval_images)
    dice = np.stack(
      [
        _dice(pred, label, spec.num_classes)
        for pred, label in zip(preds, eval_labels, strict=True)
      ]
    )
    mean, std = np.nanmean(dice, axis=0), np.nanstd(dice, axis=0)
    cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, std, strict=True)]
    foreground = np.nanmean(dice[:, 1:], axis=1)
    rows.append(
      f"| {method} | "
      + " | ".join(cells)
      + f" | {np.nanmean(foreground):.3f} | {fit_seconds:.1f} | "
      f"{predict_seconds:.2f} | {model.mapping_.tolist()} |\n"
    )
    print(f"  {dataset} {method} done", file=sys.stderr, flush=True)
  return header + "".join(rows)


def main(argv):
  del argv
  from medseg_jax import xla_cpu  # noqa: PLC0415

  xla_cpu.configure_flags()  # Before any JAX computation.
  warnings.filterwarnings("ignore", category=UserWarning, module="skimage")
  for dataset in _DATASETS.value:
    if dataset not in _SPLITS:
      raise app.UsageError(f"Unknown dataset {dataset!r}: {sorted(_SPLITS)}.")
  start = time.perf_counter()
  for dataset in _DATASETS.value:
    print(_run(dataset))
  print(f"Total wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)
