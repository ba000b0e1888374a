"""Timing and FLOP-count helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

# Kernel choices under which XLA's cost analysis sees every convolution:
# the house kernels and the oneDNN library calls are opaque to the count
# (`lowering.override(**XLA_KERNELS)`).
XLA_KERNELS = dict(
  conv3d="xla", max_pool="xla", batch_norm_sums="sum", conv_library="xla"
)


def flops(lowered: Any) -> float:
  """XLA's FLOP count of a lowered program (`jax.jit(f).lower(...)`).

  Lower it inside `lowering.override(**XLA_KERNELS)`, from a `jax.jit`
  object that is not also run (its trace would keep those kernels): the
  compiled CPU program hides convolutions in library calls, and so does a
  program traced with the oneDNN lowering.
  """
  analysis = lowered.cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0]
  return float((analysis or {}).get("flops", float("nan")))


def median_ms(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `fn()` in ms over `repeats` calls after a warm-up.

  `fn` must block until its work is done (e.g. `jax.block_until_ready`).
  """
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)
