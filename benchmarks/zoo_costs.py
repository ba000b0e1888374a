r"""What each zoo preset costs on this machine, in the trainer's own step.

  .venv/bin/python benchmarks/zoo_costs.py --data=isbi --patch=128,128
  .venv/bin/python benchmarks/zoo_costs.py --data=synthetic3d \
      --models=unet,resenc_unet --repeats=3

For every preset of `configs/zoo.py` that supports the data's dimensions
(or those named by ``--models``), the config the suites train
(``configs/zoo.py:model=M,data=D``) is compiled with
`plan.compile_train_step`: the trainer's step with its loss, deep
supervision, on-device augmentation and optimiser, for the config's batch
and patch. Printed per preset: parameters; XLA's FLOP count of one train
step (cost analysis of the step lowered with XLA's own kernels: the
house kernels and the oneDNN library calls that the step runs with are
opaque to the count); the step's compiled memory
(arguments + outputs + temporaries - donated buffers); and the median wall
time of the step over ``--repeats`` calls after one warm-up, on random
inputs. The suite tables in docs/models.md join these columns to the
trained rows. ``--markdown`` prints a table for the docs.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

# Run as a script from anywhere: make the repository importable.
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import XLA_KERNELS  # noqa: E402
from benchmarks.timing import flops  # noqa: E402
from medseg_jax import xla_cpu  # noqa: E402


def measure(config, spec, repeats: int) -> dict[str, float]:
  """Parameters, step FLOPs, compiled bytes and median step seconds."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from medseg_jax import plan  # noqa: PLC0415
  from medseg_jax.models import lowering  # noqa: PLC0415

  step = plan.compile_train_step(config, spec)
  # FLOPs from the program with XLA's own kernels: the house kernels and
  # library calls (oneDNN convolutions) are opaque to the count.
  with lowering.override(**XLA_KERNELS):
    xla_step = plan.compile_train_step(config, spec, compile=False)
  compiled, init_state, shapes = (
    step["compiled"],
    step["init_state"],
    step["batch"],
  )
  stats = compiled.memory_analysis()
  memory = (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )
  state = jax.jit(init_state)(jax.random.key(0))
  params = sum(x.size for x in jax.tree.leaves(state.params))
  rng = np.random.default_rng(0)
  batch = {}
  for name, shape in shapes.items():
    if name == "label":
      values = rng.integers(0, spec.num_classes, shape.shape)
    elif name == "mask":
      values = np.ones(shape.shape)
    else:
      values = rng.standard_normal(shape.shape)
    batch[name] = jax.device_put(values.astype(shape.dtype))
  key = jax.random.key(1)
  times = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    state, metrics, _ = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    if i:  # The first call is the warm-up.
      times.append(time.perf_counter() - start)
  return dict(
    params=params,
    flops=flops(xla_step["lowered"]),
    memory=memory,
    seconds=statistics.median(times),
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--data", default="synthetic2d", help="a data= name of configs/zoo.py"
  )
  parser.add_argument("--models", default="", help="comma-separated presets")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
    "--patch", default="", help="e.g. 128,128: the suite's patch override"
  )
  parser.add_argument("--batch", type=int, default=0, help="batch override")
  parser.add_argument("--markdown", action="store_true")
  args = parser.parse_args()

  from configs import zoo  # noqa: PLC0415

  if args.data not in zoo.DATA:
    parser.error(f"--data={args.data!r}; valid: {sorted(zoo.DATA)}")
  names = [m for m in args.models.split(",") if m] or list(zoo.MODELS)
  unknown = sorted(set(names) - set(zoo.MODELS))
  if unknown:
    parser.error(f"--models: unknown {unknown}; valid: {sorted(zoo.MODELS)}")
  dims = len(zoo.DATA[args.data]().data.patch_size)
  names = [m for m in names if dims in zoo.MODELS[m][1]]

  xla_cpu.configure_for(zoo.get_config(f"model={names[0]},data={args.data}"))
  import jax  # noqa: PLC0415

  from medseg_jax.data import registry  # noqa: PLC0415

  print(f"device: {jax.devices()[0].device_kind}; data={args.data}")
  if args.markdown:
    print(
      "| model | parameters | GFLOP per step | step (s) | compiled memory "
      "(MiB) |\n|---|---|---|---|---|"
    )
  else:
    print(
      f"{'model':<18}{'batch x patch':>18}{'params':>12}{'GFLOP/step':>12}"
      f"{'step s':>9}{'MiB':>9}"
    )
  for name in names:
    config = zoo.get_config(f"model={name},data={args.data}")
    if args.patch:
      config.data.patch_size = tuple(int(p) for p in args.patch.split(","))
    if args.batch:
      config.batch_size = args.batch
    spec = registry.get_dataset_spec(config.dataset, config.get("manual_dir"))
    row = measure(config, spec, args.repeats)
    shape = "x".join(map(str, (config.batch_size, *config.data.patch_size)))
    if args.markdown:
      print(
        f"| {name} | {row['params']:,} | {row['flops'] / 1e9:.1f} | "
        f"{row['seconds']:.2f} | {row['memory'] / 2**20:.0f} |",
        flush=True,
      )
    else:
      print(
        f"{name:<18}{shape:>18}{row['params']:>12,}"
        f"{row['flops'] / 1e9:>12.1f}{row['seconds']:>9.2f}"
        f"{row['memory'] / 2**20:>9.0f}",
        flush=True,
      )


if __name__ == "__main__":
  main()
