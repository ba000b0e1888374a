"""Figures of the corruption study (matplotlib, no display needed).

Each function returns a ``matplotlib.figure.Figure`` built without pyplot,
so it works on a headless machine; save it with ``figure.savefig(path)``,
or let a notebook show it by leaving it as a cell's value.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def dice_against_severity(
  summary: Mapping[str, Any], title: str | None = None
) -> Figure:
  """Dice against severity, one panel per foreground class and one for
  their mean, one line per corruption (severity 0: the clean image).

  Args:
    summary: the summary of ``robustness.evaluate_robustness``.
    title: figure title (default: the split and step, if known).
  """
  classes = list(summary["class_names"][1:]) + ["mean_foreground"]
  levels = [int(s) for s in summary["severities"]]
  columns = min(len(classes), 3)
  rows = -(-len(classes) // columns)
  figure = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
  axes = figure.subplots(rows, columns, squeeze=False).ravel()
  for ax, column in zip(axes, classes, strict=False):
    for name, entry in summary["corruptions"].items():
      dice = [entry[column]["dice"][str(s)] for s in levels]
      ax.plot(levels, dice, marker="o", markersize=3, label=name)
    ax.set_title(column.replace("_", " "))
    ax.set_xlabel("severity")
    ax.set_ylabel("Dice")
    ax.set_xticks(levels)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
  for ax in axes[len(classes) :]:
    ax.axis("off")
  handles, labels = axes[0].get_legend_handles_labels()
  figure.legend(handles, labels, loc="outside right center", fontsize=8)
  if title is None and "split_string" in summary:
    title = f"{summary['split_string']}, step {summary.get('step', '?')}"
  if title:
    figure.suptitle(title)
  return figure


def compare_runs(
  curves: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
  severities: Sequence[int],
  title: str | None = None,
) -> Figure:
  """Mean foreground Dice against severity for several training arms.

  Args:
    curves: ``arm -> corruption -> [seed][severity]`` Dice (severity 0
      first); each arm is drawn as its mean over seeds with a band of
      +- one standard deviation, one panel per corruption.
    severities: the x values, 0 first.
    title: figure title.
  """
  arms = list(curves)
  names = list(next(iter(curves.values())))
  columns = min(len(names), 5)
  rows = -(-len(names) // columns)
  figure = Figure(figsize=(3.0 * columns, 2.6 * rows), layout="constrained")
  axes = figure.subplots(rows, columns, squeeze=False).ravel()
  for ax, name in zip(axes, names, strict=False):
    for arm in arms:
      values = np.asarray(curves[arm][name], float)
      mean, std = values.mean(axis=0), values.std(axis=0)
      (line,) = ax.plot(severities, mean, marker="o", markersize=3, label=arm)
      ax.fill_between(
        severities, mean - std, mean + std, color=line.get_color(), alpha=0.2
      )
    ax.set_title(name, fontsize=9)
    ax.set_xticks(list(severities))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
  for ax in axes[len(names) :]:
    ax.axis("off")
  handles, labels = axes[0].get_legend_handles_labels()
  figure.legend(handles, labels, loc="outside lower center", ncols=len(arms))
  if title:
    figure.suptitle(title)
  return figure


def gallery(
  images: Mapping[str, Sequence[np.ndarray]],
  severities: Sequence[int],
  title: str | None = None,
) -> Figure:
  """One image under each corruption (rows) at each severity (columns).

  Args:
    images: ``corruption -> [image per severity]``, each ``f[H, W]`` (a
      2-D slice, one channel).
    severities: the column labels.
    title: figure title.
  """
  names = list(images)
  figure = Figure(
    figsize=(1.6 * len(severities), 1.6 * len(names)), layout="constrained"
  )
  axes = figure.subplots(len(names), len(severities), squeeze=False)
  for r, name in enumerate(names):
    for c, severity in enumerate(severities):
      ax = axes[r, c]
      ax.imshow(np.asarray(images[name][c]), cmap="gray")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(f"severity {severity}", fontsize=8)
      if c == 0:
        ax.set_ylabel(name, fontsize=7)
  if title:
    figure.suptitle(title)
  return figure
