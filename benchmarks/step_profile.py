r"""Where a train step's time goes: our XLA thunks beside PyTorch's ops.

  .venv/bin/python benchmarks/step_profile.py             # 2-D
  .venv/bin/python benchmarks/step_profile.py --dims=3

The network, batch and optimizer of `benchmarks/train_throughput.py`. For
medseg_jax the jitted step runs under `jax.profiler` and every XLA:CPU
thunk's time is summed by kind: each custom call by its target (our oneDNN
convolutions, the fused batch norm, XLA's own oneDNN calls), fusions by
their name without the numeric suffix. For PyTorch (channels-last) the step
runs under `torch.profiler` and the self CPU time is summed per operator.
Both are per step (mean over `--steps` steps after warm-up). Thunks may
overlap (XLA runs independent ones concurrently), so the column can add up
to more than the step. torch is a benchmark-only extra (`make bench-deps`).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import train_throughput  # noqa: E402
from medseg_jax import xla_cpu  # noqa: E402


def _custom_call_targets(hlo: str) -> dict[str, str]:
  """Instruction name -> custom-call target, from optimised HLO text."""
  targets = {}
  for line in hlo.splitlines():
    match = re.search(r"%?([\w.\-]+) = .*custom_call_target=\"([^\"]+)\"", line)
    if match:
      targets[match.group(1)] = match.group(2)
  return targets


def _kind(name: str, targets: dict[str, str]) -> str | None:
  if name in targets:
    return "custom call " + targets[name]
  for target in ("__onednn$convolution", "__onednn$matmul"):
    if target in name:
      return "custom call " + target
  if name.startswith(("ThunkExecutor", "$", "Pjit", "Common", "Parse")):
    return None  # Executor and dispatch frames, not thunks.
  if name.startswith("Handle") or " " in name:
    return None
  return re.sub(r"[._]\d+$", "", name)


def profile_jax(dims: int, steps: int) -> tuple[float, dict[str, tuple]]:
  """(ms per step, kind -> (ms per step, thunks per step))."""
  shape = train_throughput.SHAPES[dims]
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
  label = jnp.asarray(
    rng.integers(0, train_throughput.NUM_CLASSES, shape[:-1]).astype(np.int32)
  )
  state, step = train_throughput.jax_trainer(shape, dims)
  targets = _custom_call_targets(
    step.lower(state, image, label).compile().as_text()
  )
  for _ in range(3):
    state, loss = step(state, image, label)
  loss.block_until_ready()
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir, create_perfetto_trace=True)
    start = time.perf_counter()
    for _ in range(steps):
      state, loss = step(state, image, label)
      loss.block_until_ready()
    wall = (time.perf_counter() - start) / steps * 1e3
    jax.profiler.stop_trace()
    trace = next(pathlib.Path(logdir).rglob("*.trace.json.gz"))
    events = json.load(gzip.open(trace))["traceEvents"]
  total = collections.defaultdict(float)
  count = collections.Counter()
  for event in events:
    if event.get("ph") != "X":
      continue
    kind = _kind(event["name"], targets)
    if kind is not None:
      total[kind] += event["dur"] / 1e3 / steps
      count[kind] += 1
  return wall, {k: (total[k], count[k] / steps) for k in total}


def profile_torch(dims: int, steps: int) -> tuple[float, dict[str, tuple]]:
  """(ms per step, operator -> (self ms per step, calls per step))."""
  import torch  # noqa: PLC0415

  torch.manual_seed(0)
  shape = train_throughput.SHAPES[dims]
  fmt = {2: torch.channels_last, 3: torch.channels_last_3d}[dims]
  image = torch.randn(shape[0], 1, *shape[1:-1])
  label = torch.randint(
    0, train_throughput.NUM_CLASSES, (shape[0], *shape[1:-1])
  )
  net = train_throughput.make_torch_unet(
    train_throughput.FEATURES, 1, train_throughput.NUM_CLASSES, "batch", dims
  )
  step = train_throughput.torch_trainer(net, image, label, fmt)
  for _ in range(3):
    step()
  activities = [torch.profiler.ProfilerActivity.CPU]
  with torch.profiler.profile(activities=activities) as prof:
    start = time.perf_counter()
    for _ in range(steps):
      step()
    wall = (time.perf_counter() - start) / steps * 1e3
  table = {
    e.key: (e.self_cpu_time_total / 1e3 / steps, e.count / steps)
    for e in prof.key_averages()
    if e.self_cpu_time_total > 0
  }
  return wall, table


def _print(title, wall, table, rows):
  print(f"\n{title}: {wall:.1f} ms per step (under the profiler)")
  print(f"  {'ms/step':>8} {'calls':>6}  what")
  shown = 0.0
  for name, (ms, calls) in sorted(table.items(), key=lambda kv: -kv[1][0])[
    :rows
  ]:
    shown += ms
    print(f"  {ms:8.2f} {calls:6.0f}  {name}")
  rest = sum(ms for ms, _ in table.values()) - shown
  print(f"  {rest:8.2f} {'':6}  everything else")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rows", type=int, default=18)
  parser.add_argument("--skip_torch", action="store_true")
  args = parser.parse_args()
  xla_cpu.configure_flags(spatial_dims=args.dims)
  wall, table = profile_jax(args.dims, args.steps)
  _print("medseg_jax, XLA:CPU thunks by kind", wall, table, args.rows)
  if not args.skip_torch:
    wall, table = profile_torch(args.dims, args.steps)
    _print(
      "PyTorch eager (channels-last), self CPU time by operator",
      wall,
      table,
      args.rows,
    )


if __name__ == "__main__":
  main()
