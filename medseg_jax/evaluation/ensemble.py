"""An ensemble of trained runs (the folds of a cross-validation).

The members' softmax outputs are averaged, then the class is the argmax
and the post-processing chosen on the cross-validation is applied, as
nnU-Net predicts with its five folds:

  ensemble = load_ensemble("workdirs/cv")        # fold_0, fold_1, ...
  label = ensemble.predict_label(image)          # f32[*S, C] -> i32[*S]

A folds directory is what `python -m medseg_jax.cross_validate` writes:
one run per fold in `fold_<k>/` and `cv_summary.json` with the chosen
post-processing. Every member must have been trained on the same dataset
with the same normalisation and patch, so one input serves all.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg_jax.evaluation import case_predictor
from medseg_jax.evaluation import inference

CV_SUMMARY = "cv_summary.json"
_FOLD_DIR = re.compile(r"fold_(\d+)")


@dataclasses.dataclass(frozen=True)
class Ensemble:
  """Averages its members' probabilities.

  Attributes:
    members: one predictor per run, each with its variables.
    largest_component: keep only each class's largest component.
  """

  members: tuple[case_predictor.CasePredictor, ...]
  largest_component: bool = False

  def predict_probs(self, image: np.ndarray) -> np.ndarray:
    """`f32[*S, C]` -> `f32[*S, K]`, the mean of the members' softmax."""
    total = None
    for member in self.members:
      probs = member.predict_probs(image).astype(np.float64)
      total = probs if total is None else total + probs
    return (total / len(self.members)).astype(np.float32)

  def predict_label(self, image: np.ndarray) -> np.ndarray:
    """`f32[*S, C]` -> `i32[*S]` class ids (after post-processing)."""
    label = np.argmax(self.predict_probs(image), axis=-1).astype(np.int32)
    if self.largest_component:
      label = inference.keep_largest_component(label)
    return label


def fold_dirs(workdir: str | pathlib.Path) -> list[pathlib.Path]:
  """The `fold_<k>` runs of a folds directory, by fold; [] if none."""
  root = pathlib.Path(workdir).expanduser()
  if not root.is_dir():
    return []
  found = []
  for path in root.iterdir():
    match = _FOLD_DIR.fullmatch(path.name)
    if match and (path / "config.json").is_file():
      found.append((int(match.group(1)), path))
  return [path for _, path in sorted(found)]


def is_folds_dir(workdir: str | pathlib.Path) -> bool:
  return bool(fold_dirs(workdir))


def chosen_postprocessing(workdir: str | pathlib.Path) -> bool | None:
  """The largest-component choice in `cv_summary.json`, or None."""
  path = pathlib.Path(workdir).expanduser() / CV_SUMMARY
  if not path.is_file():
    return None
  return bool(json.loads(path.read_text())["postprocessing"]["value"])


def _normalize_specs(config: Any) -> list[dict[str, Any]]:
  return [
    dict(s) for s in config.data.train_transforms if s["op"] == "normalize"
  ]


def from_runs(
  runs: Sequence[str | pathlib.Path],
  which: str = "best",
  *,
  config_overrides: Any = None,
  largest_component: bool = False,
  tta_flip_axes: Sequence[int] | str | None = None,
) -> tuple[Ensemble, case_predictor.Trained]:
  """The ensemble of `runs`, and the first member's `Trained` (its config
  and dataset spec describe the inputs every member takes).

  Args:
    runs: run work dirs.
    which: the checkpoint of each (`"best"`, `"latest"`, a step).
    config_overrides: optional `f(config) -> config` applied to each
      member's saved config (e.g. evaluation options).
    largest_component: post-processing of the ensemble's labels.
    tta_flip_axes: flip test-time augmentation of every member (`"all"`:
      every spatial axis); None keeps each member's
      `config.eval.tta_flip_axes`.

  Raises:
    ValueError: for no runs, or members trained on other data, with
      another normalisation or patch size (the message names the field).
  """
  if not runs:
    raise ValueError("An ensemble needs at least one run.")
  members, first = [], None
  for run in runs:
    trained = case_predictor.load_trained(str(run), which)
    config = trained.config
    if config_overrides is not None:
      config = config_overrides(config)
    if tta_flip_axes == "all":
      config.eval.tta_flip_axes = tuple(range(trained.spec.spatial_dims))
    elif tta_flip_axes is not None:
      config.eval.tta_flip_axes = tuple(tta_flip_axes)
    # Each member predicts labels of its own; only the ensemble cleans up.
    config.eval.largest_component = False
    if first is None:
      first = dataclasses.replace(trained, config=config)
    else:
      for field, mine, theirs in (
        ("dataset", config.dataset, first.config.dataset),
        (
          "manual_dir",
          config.get("manual_dir"),
          first.config.get("manual_dir"),
        ),
        (
          "data.patch_size",
          tuple(config.data.patch_size),
          tuple(first.config.data.patch_size),
        ),
        ("normalize", _normalize_specs(config), _normalize_specs(first.config)),
      ):
        if mine != theirs:
          raise ValueError(
            f"Ensemble member {run} differs from {runs[0]} in {field} "
            f"({mine!r} vs {theirs!r}); members must take the same inputs."
          )
    members.append(
      case_predictor.CasePredictor.from_config(
        config, trained.model, trained.variables
      )
    )
  return Ensemble(tuple(members), largest_component), first


def load_ensemble(
  workdir: str | pathlib.Path,
  which: str = "best",
  *,
  largest_component: bool | None = None,
  tta_flip_axes: Sequence[int] | str | None = None,
  config_overrides: Any = None,
) -> tuple[Ensemble, case_predictor.Trained]:
  """The ensemble of a folds directory's runs (see the module docstring).

  `largest_component=None` takes the choice recorded in `cv_summary.json`
  (off if there is none).

  Raises:
    FileNotFoundError: if `workdir` holds no `fold_<k>` run.
  """
  runs = fold_dirs(workdir)
  if not runs:
    raise FileNotFoundError(
      f"{workdir} holds no fold_<k>/ runs (with config.json); train them "
      "with python -m medseg_jax.cross_validate."
    )
  if largest_component is None:
    largest_component = bool(chosen_postprocessing(workdir))
  return from_runs(
    runs,
    which,
    config_overrides=config_overrides,
    largest_component=largest_component,
    tta_flip_axes=tta_flip_axes,
  )
