r"""XLA:CPU compile options against each other, in one process, interleaved.

  .venv/bin/python benchmarks/xla_cpu_options.py               # the default set
  .venv/bin/python benchmarks/xla_cpu_options.py --dims=3 --steps=4
  .venv/bin/python benchmarks/xla_cpu_options.py \
      --variant='no_ynn:xla_cpu_experimental_ynn_fusion_type='

`benchmarks/train_throughput.py` measures one flag set per process (flags
in `XLA_FLAGS` are read once, when the backend starts). Most XLA:CPU
debug options can also be given per compilation
(`lowered.compile(compiler_options=...)`), which is what this script does:
it compiles the same train step (the reference U-Net of
`train_throughput.py`: forward, backward, Adam, batch-norm statistics) once
per variant on top of the project's flags (`medseg_jax/xla_cpu.py`),
checks that every variant gives the same loss, then runs the variants step
by step in turn, so that a loaded machine slows them alike, and prints
each median against the first variant's.

A variant is `NAME:OPTION=VALUE[;OPTION=VALUE...]`; an empty VALUE passes
the empty string (for a repeated-enum option such as
`xla_cpu_experimental_ynn_fusion_type`, the empty list: no YNNPACK fusion
at all). Enum values use their full names, e.g.
`LIBRARY_FUSION_TYPE_ELTWISE`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

# Run as a script from anywhere: make the repository importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_YNN = "xla_cpu_experimental_ynn_fusion_type"
DEFAULT_VARIANTS = (
  "project:",
  f"no_ynn_fusions:{_YNN}=",
  f"ynn_eltwise_only:{_YNN}=LIBRARY_FUSION_TYPE_ELTWISE",
  f"ynn_reduce_only:{_YNN}=LIBRARY_FUSION_TYPE_REDUCE",
  "concurrency_scheduler:xla_cpu_enable_concurrency_optimized_scheduler=true",
  "fast_min_max:xla_cpu_enable_fast_min_max=true",
)


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
  """`NAME:OPT=VAL;OPT=VAL` -> (name, compiler options)."""
  name, _, rest = text.partition(":")
  if not name:
    raise SystemExit(f"--variant {text!r}: expected NAME:OPTION=VALUE;...")
  options: dict[str, object] = {}
  for item in filter(None, rest.split(";")):
    key, eq, value = item.partition("=")
    if not eq:
      raise SystemExit(f"--variant {text!r}: {item!r} has no '='")
    lowered = value.lower()
    options[key] = {"true": True, "false": False}.get(lowered, value)
  return name, options


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument(
    "--variant",
    action="append",
    help="NAME:OPTION=VALUE[;...] (repeatable; default: a built-in set)",
  )
  args = parser.parse_args()

  from medseg_jax import xla_cpu  # noqa: PLC0415

  xla_cpu.configure_flags(os.environ, spatial_dims=args.dims)

  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from benchmarks import train_throughput  # noqa: PLC0415

  shape = train_throughput.SHAPES[args.dims]
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
  label = jnp.asarray(
    rng.integers(0, train_throughput.NUM_CLASSES, shape[:-1]).astype(np.int32)
  )
  print(
    f"{args.dims}-D reference U-Net train step, input {shape}; jax "
    f"{jax.__version__}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
  )
  runs = {}
  for text in args.variant or DEFAULT_VARIANTS:
    name, options = parse_variant(text)
    state, step = train_throughput.jax_trainer(shape, args.dims)
    t0 = time.perf_counter()
    try:
      compiled = step.lower(state, image, label).compile(
        compiler_options=options
      )
    except Exception as e:  # noqa: BLE001  (an option XLA rejects)
      print(f"  {name}: not compiled: {str(e).splitlines()[0]}")
      continue
    print(
      f"  {name}: {options or 'project flags only'}, compiled in "
      f"{time.perf_counter() - t0:.1f} s"
    )
    holder = {"state": state}

    def run(compiled=compiled, holder=holder):
      holder["state"], loss = compiled(holder["state"], image, label)
      return float(loss)

    runs[name] = run
  if not runs:
    raise SystemExit("No variant compiled.")
  losses = {name: [fn(), fn()][-1] for name, fn in runs.items()}
  first_loss = next(iter(losses.values()))
  for name, loss in losses.items():
    if abs(loss - first_loss) > 1e-4 * abs(first_loss):
      raise SystemExit(f"{name}: loss {loss} differs from {first_loss}.")
  times = {name: [] for name in runs}
  for _ in range(args.steps):
    for name, fn in runs.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(1e3 * (time.perf_counter() - t0))
  base = statistics.median(next(iter(times.values())))
  print(f"  {'variant':28s} {'ms/step':>9s} {'speed vs first':>15s}")
  for name, values in times.items():
    ms = statistics.median(values)
    print(f"  {name:28s} {ms:9.1f} {base / ms:14.2f}x")


if __name__ == "__main__":
  main()
