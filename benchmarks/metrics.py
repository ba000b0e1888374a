r"""Surface-metric speed: our HD95 beside MONAI's on a 256^3 pair of masks.

  .venv/bin/python benchmarks/metrics.py
  .venv/bin/python benchmarks/metrics.py --size=128 --repeats=5

Builds a ground truth and a prediction on a `size^3` grid with CT-like
anisotropic spacing (2.5 x 0.8 x 0.8 mm): class 1 a large organ (a deformed
ellipsoid spanning about half of each axis, liver-sized), class 2 a small
one (kidney-sized); the prediction's ellipsoids are shifted, rescaled and
deformed differently. Then times, as the median of `--repeats` runs after
one warm-up:

* `surface_scores` (HD95, HD, ASSD and NSD of both classes) with
  `method="auto"`, and with `method="edt"` (distance transforms only);
* MONAI's `compute_hausdorff_distance(percentile=95)` on the same masks as
  one-hot tensors (made outside the timing), if monai is importable;
  otherwise that column is skipped with a message. MONAI is a
  benchmark-only extra (requirements-bench.txt).

Prints the times, the HD95 values of each (they agree to float32), and the
ratio MONAI / ours.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

# Run as a script from anywhere: make the repository importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from medseg_jax import xla_cpu  # noqa: E402
from medseg_jax.metrics import surface  # noqa: E402

SPACING = (2.5, 0.8, 0.8)


def _deformed_ellipsoid(
  size: int,
  centre: tuple[float, ...],
  radii: tuple[float, ...],
  rng: np.random.Generator,
  amplitude: float,
) -> np.ndarray:
  """bool[size, size, size]: an ellipsoid in [-1, 1]^3 whose implicit
  function is bent by a few random low-frequency sinusoids."""
  axes = [np.linspace(-1, 1, size, dtype=np.float32)] * 3
  z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
  terms = zip((z, y, x), centre, radii, strict=True)
  f = sum(((a - c) / r) ** 2 for a, c, r in terms)
  for _ in range(6):
    k = rng.normal(0.0, 3.0, size=3).astype(np.float32)
    phase = np.float32(rng.uniform(0, 2 * np.pi))
    f = f + amplitude / 6 * np.sin(k[0] * z + k[1] * y + k[2] * x + phase)
  return f < 1.0


def make_case(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(pred, label), each `i32[size, size, size]` with classes 0, 1, 2."""
  rng = np.random.default_rng(seed)
  out = []
  for shift, scale in ((0.0, 1.0), (0.03, 1.06)):
    volume = np.zeros((size,) * 3, np.int32)
    organ = _deformed_ellipsoid(
      size, (shift, -shift, shift), (0.5, 0.6 * scale, 0.55), rng, 0.3
    )
    small = _deformed_ellipsoid(
      size, (0.1 + shift, 0.55, -0.6), (0.2, 0.12 * scale, 0.1), rng, 0.2
    )
    volume[organ] = 1
    volume[small] = 2
    out.append(volume)
  label, pred = out
  return pred, label


def _median_time(fn, repeats: int) -> tuple[float, object]:
  result = fn()  # Warm-up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), result


def main() -> None:
  xla_cpu.configure_flags()  # Before any JAX computation.
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  start = time.perf_counter()
  pred, label = make_case(args.size)
  print(
    f"masks {args.size}^3, spacing {SPACING} mm, built in "
    f"{time.perf_counter() - start:.1f} s; voxels per class "
    f"label {np.bincount(label.ravel()).tolist()}, "
    f"pred {np.bincount(pred.ravel()).tolist()}"
  )

  rows = []
  for method in ("auto", "edt"):
    seconds, scores = _median_time(
      lambda m=method: surface.surface_scores(
        pred, label, 3, SPACING, method=m
      ),
      args.repeats,
    )
    rows.append((f"medseg_jax surface_scores ({method})", seconds, scores))
    print(
      f"{rows[-1][0]:42s} {seconds:8.3f} s  HD95 {scores['hd95'][1:]} "
      "(with HD, ASSD, NSD)"
    )

  try:
    import torch
    from monai.metrics import compute_hausdorff_distance
  except ImportError as e:
    print(f"MONAI column skipped: monai is not importable ({e}).")
    return
  import monai

  def one_hot(volume: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([volume == c for c in range(3)])[None])

  pred_t, label_t = one_hot(pred), one_hot(label)
  seconds, hd95 = _median_time(
    lambda: compute_hausdorff_distance(
      pred_t, label_t, percentile=95, spacing=SPACING
    ),
    args.repeats,
  )
  name = f"MONAI {monai.__version__} compute_hausdorff_distance"
  print(f"{name:42s} {seconds:8.3f} s  HD95 {hd95.numpy()[0]}")
  for label_, ours, _ in rows:
    print(f"ratio MONAI / {label_}: {seconds / ours:.2f}x")


if __name__ == "__main__":
  main()
