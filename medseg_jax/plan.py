"""Choices made from the data itself, before training.

For now one choice: the training patch of a dataset nobody tuned a config
for (`configs/unet_folder.py` without `patch=`). A patch larger than the
cases makes every training crop mostly padding; with instance or group
normalisation the network then depends on how much padding it sees, and a
patch far larger than the cases only wastes compute. So the patch is the
configured default, shrunk per axis to the median case shape rounded down
to the network's size multiple (nnU-Net's planners start from the median
shape for the same reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Cases read to estimate the median shape: evenly spaced over the split.
MAX_CASES = 100


def median_shape(source: Any, max_cases: int = MAX_CASES) -> tuple[int, ...]:
  """The per-axis median spatial shape of the labels of a data source.

  Args:
    source: a random-access source of examples with a `label: int[*S]`
      (e.g. `registry.data_source(...)`).
    max_cases: read at most this many cases, evenly spaced.

  Raises:
    ValueError: if the source is empty.
  """
  n = len(source)
  if n == 0:
    raise ValueError("Cannot take the median shape of an empty split.")
  indices = np.unique(np.linspace(0, n - 1, min(n, max_cases)).astype(int))
  shapes = np.array([np.shape(source[int(i)]["label"]) for i in indices])
  return tuple(int(v) for v in np.median(shapes, axis=0))


def patch_for(
  median: Sequence[int], default: Sequence[int], multiple: int
) -> tuple[tuple[int, ...], str]:
  """The patch for cases of `median` shape, and why.

  Per axis: `default`, or the median rounded down to a multiple of
  `multiple` if that is smaller (never below `multiple`).

  Returns:
    `(patch, reason)`, the reason a sentence for the run's log.
  """
  if len(median) != len(default):
    raise ValueError(
      f"Median case shape {tuple(median)} and default patch "
      f"{tuple(default)} differ in rank."
    )
  patch = tuple(
    int(min(d, max(multiple, (m // multiple) * multiple)))
    for m, d in zip(median, default, strict=True)
  )
  if patch == tuple(default):
    reason = (
      f"the default {tuple(default)}, no larger than the median case "
      f"shape {tuple(median)}"
    )
  else:
    reason = (
      f"the median case shape {tuple(median)} rounded down to a multiple "
      f"of {multiple} (the network's size multiple), since the default "
      f"{tuple(default)} is larger than the cases"
    )
  return patch, reason
