r"""Cost of the JAX augmentations: in the train step, and against MONAI.

  .venv/bin/python benchmarks/augment.py                       # both parts
  .venv/bin/python benchmarks/augment.py --repeats=30 --part=step
  .venv/bin/python benchmarks/augment.py --part=throughput --examples=64

Part ``step``: the median wall and process CPU time of one jitted train
step of the 2-D U-Net of ``benchmarks/models.py`` (16-32-64-128, two 3x3
conv + instance norm + ReLU per block, batch 8 of 128x128x1, 4 classes,
Adam, cross-entropy), without and with ``OPS`` applied on the device inside
the same jitted step, and the overhead ratios; also with the geometric ops
resampled one by one (``Augment(fuse=False)``), the layout before they were
composed. The variants are timed in alternation, so a change of machine
load hits all of them; CPU time is the steadier figure on a shared machine.
Each op alone on the batch is timed as well, to show where the cost is.

Part ``throughput``: augmented examples per second on the CPU, the jitted
batch call of ``medseg_jax.augment`` against the equivalent MONAI
dictionary transforms run per example (as a DataLoader worker does), on the
same 128x128 images. MONAI skips an op whose coin flip fails; the vmapped
JAX batch computes every op and selects, so MONAI is timed both at the
listed probabilities and with every probability set to 1. torch and MONAI
are imported only here; without them that column is skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Run as a script from anywhere: make the repository importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from medseg_jax import augment  # noqa: E402
from medseg_jax import losses  # noqa: E402
from medseg_jax import models  # noqa: E402
from medseg_jax import xla_cpu  # noqa: E402

SIZE = 128
BATCH = 8
CLASSES = 4
# A representative list (nnU-Net-like probabilities).
OPS = [
  dict(op="flip", p=0.5),
  dict(op="rot90", p=0.5),
  dict(op="affine", p=0.5, rotation=(-15, 15), scale=(0.85, 1.15)),
  dict(op="elastic", p=0.3, magnitude=(0, 8), grid=6),
  dict(op="gamma", p=0.3, gamma=(0.7, 1.5)),
  dict(op="noise", p=0.2, sigma=(0, 0.1)),
  dict(op="blur", p=0.2, sigma=(0.5, 1.5)),
]


def _images(count: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Smooth random images with blob labels, ``[count, SIZE, SIZE, 1]``."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:SIZE, :SIZE]
  image = np.zeros((count, SIZE, SIZE, 1), np.float32)
  label = np.zeros((count, SIZE, SIZE), np.int32)
  for b in range(count):
    for cls in range(1, CLASSES):
      cy, cx = rng.uniform(20, SIZE - 20, 2)
      r = rng.uniform(8, 25)
      inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
      label[b][inside] = cls
      image[b, ..., 0][inside] += cls
  image += rng.normal(0, 0.3, image.shape).astype(np.float32)
  mask = np.ones(label.shape, np.float32)
  return {"image": image, "label": label, "mask": mask}


def _median_ms(times: list[float]) -> float:
  return statistics.median(times) * 1e3


# ----------------------------------------------------------------------------
# Part 1: train step with and without on-device augmentation.
# ----------------------------------------------------------------------------


def make_step(model, tx, augment_fn):
  loss_fn = losses.get_loss("cross_entropy")

  def step(params, opt_state, batch, key):
    if augment_fn is not None:
      batch = augment_fn(key, batch)

    def objective(p):
      logits = model.apply({"params": p}, batch["image"], train=True)
      return jnp.mean(loss_fn(logits, batch["label"], batch["mask"]))

    loss, grads = jax.value_and_grad(objective)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step)


def _timed(fn, *args) -> tuple[float, float]:
  """Wall and process CPU seconds of one call, waited for."""
  wall, cpu = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - wall, time.process_time() - cpu


def bench_step(repeats: int) -> None:
  model = models.get_model(
    "unet",
    num_classes=CLASSES,
    in_channels=1,
    features=(16, 32, 64, 128),
    norm="instance",
  )
  batch = jax.device_put(_images(BATCH))
  params = model.init(jax.random.key(0), batch["image"][:1], train=False)[
    "params"
  ]
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  pipeline = augment.build(OPS, spatial_shape=(SIZE, SIZE))
  separate = dataclasses.replace(pipeline, fuse=False)
  steps = {
    "plain step": make_step(model, tx, None),
    "+ augmentation on device": make_step(model, tx, pipeline),
    "+ augmentation, resampling per op": make_step(model, tx, separate),
  }
  for name, fn in steps.items():
    start = time.perf_counter()
    jax.block_until_ready(fn(params, opt_state, batch, jax.random.key(0)))
    print(f"compile + first call, {name}: {time.perf_counter() - start:.1f} s")
  times = {name: [] for name in steps}
  for i in range(repeats):
    for name, fn in steps.items():
      times[name].append(
        _timed(fn, params, opt_state, batch, jax.random.key(i))
      )
  base_wall = _median_ms([w for w, _ in times["plain step"]])
  base_cpu = _median_ms([c for _, c in times["plain step"]])
  print(
    f"\nTrain step, U-Net 16-128, batch {BATCH}x{SIZE}x{SIZE}x1, Adam, CE; "
    f"median of {repeats}, variants alternating:"
  )
  print(
    f"  {'':<36}{'wall ms':>9}{'overhead':>10}{'CPU ms':>10}{'overhead':>10}"
  )
  for name, pairs in times.items():
    wall = _median_ms([w for w, _ in pairs])
    cpu = _median_ms([c for _, c in pairs])
    print(
      f"  {name:<36}{wall:>9.1f}{wall / base_wall - 1:>10.1%}"
      f"{cpu:>10.1f}{cpu / base_cpu - 1:>10.1%}"
    )
  print("  (target: at most 15 % overhead with augmentation on device)")

  print(f"\nAugmentation alone, jitted, batch {BATCH}x{SIZE}x{SIZE}x1:")
  variants = [(spec["op"], augment.build([spec])) for spec in OPS]
  variants += [
    ("whole list", pipeline),
    ("whole list, resampling per op", separate),
  ]
  for name, ops in variants:
    fn = jax.jit(ops)
    jax.block_until_ready(fn(jax.random.key(0), batch))
    pairs = [
      _timed(fn, jax.random.key(i), batch) for i in range(max(repeats, 5))
    ]
    wall = _median_ms([w for w, _ in pairs])
    cpu = _median_ms([c for _, c in pairs])
    print(f"  {name:<36}{wall:>9.2f} ms wall{cpu:>9.2f} ms CPU")


# ----------------------------------------------------------------------------
# Part 2: examples per second against MONAI dictionary transforms.
# ----------------------------------------------------------------------------


def _monai_pipeline(every: bool):
  """MONAI dictionary transforms for ``OPS`` (p = 1 for all if ``every``)."""
  from monai import transforms as mt  # pylint: disable=g-import-not-at-top

  p = {spec["op"]: 1.0 if every else spec["p"] for spec in OPS}
  keys = ("image", "label")
  modes = ("bilinear", "nearest")
  degrees = math.radians(15)
  return mt.Compose(
    [
      # Ours flips each axis with probability 0.5 once the op is drawn.
      mt.RandFlipd(keys, prob=p["flip"] * 0.5, spatial_axis=0),
      mt.RandFlipd(keys, prob=p["flip"] * 0.5, spatial_axis=1),
      mt.RandRotate90d(keys, prob=p["rot90"], max_k=3),
      mt.RandAffined(
        keys,
        prob=p["affine"],
        rotate_range=(degrees,),
        scale_range=(0.15, 0.15),
        mode=modes,
        padding_mode="zeros",
      ),
      # 6 control nodes over 128 pixels: a spacing of about 25 pixels.
      mt.Rand2DElasticd(
        keys,
        spacing=(25, 25),
        magnitude_range=(0, 8),
        prob=p["elastic"],
        mode=modes,
        padding_mode="zeros",
      ),
      mt.RandAdjustContrastd("image", prob=p["gamma"], gamma=(0.7, 1.5)),
      mt.RandGaussianNoised("image", prob=p["noise"], std=0.1),
      mt.RandGaussianSmoothd(
        "image",
        prob=p["blur"],
        sigma_x=(0.5, 1.5),
        sigma_y=(0.5, 1.5),
      ),
    ]
  ).set_random_state(seed=0)


def bench_throughput(examples: int, repeats: int) -> None:
  data = _images(examples, seed=1)
  cpu = jax.devices("cpu")[0]
  batch = jax.device_put(data, cpu)
  fn = jax.jit(augment.build(OPS, spatial_shape=(SIZE, SIZE)))
  start = time.perf_counter()
  jax.block_until_ready(fn(jax.random.key(0), batch))
  print(
    f"\ncompile + first call (batch {examples}): "
    f"{time.perf_counter() - start:.1f} s"
  )
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    # Host numpy in and out, as in the input pipeline.
    out = fn(jax.random.key(i), jax.device_put(data, cpu))
    jax.device_get(out)
    times.append(time.perf_counter() - start)
  ours = examples / statistics.median(times)
  rows = [(f"medseg_jax, jitted batch of {examples}", ours)]
  separate = jax.jit(dataclasses.replace(augment.build(OPS), fuse=False))
  jax.block_until_ready(separate(jax.random.key(0), batch))
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.device_get(separate(jax.random.key(i), jax.device_put(data, cpu)))
    times.append(time.perf_counter() - start)
  rows.append(
    ("medseg_jax, resampling per op", examples / statistics.median(times))
  )

  try:
    import monai  # noqa: F401  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"MONAI column skipped ({e}); `make bench-deps` installs it.")
  else:
    cases = [
      {
        "image": torch.from_numpy(data["image"][b].transpose(2, 0, 1).copy()),
        "label": torch.from_numpy(data["label"][b][None].copy()),
      }
      for b in range(examples)
    ]
    for every in (False, True):
      pipeline = _monai_pipeline(every)
      for case in cases[:2]:  # Warm-up.
        pipeline(dict(case))
      monai_times = []
      for _ in range(repeats):
        start = time.perf_counter()
        for case in cases:
          pipeline(dict(case))
        monai_times.append(time.perf_counter() - start)
      rate = examples / statistics.median(monai_times)
      label = "every p = 1" if every else "listed p"
      rows.append((f"MONAI {monai.__version__} dict transforms, {label}", rate))
    print(f"torch threads: {torch.get_num_threads()}")

  print(
    f"\nAugmented {SIZE}x{SIZE} examples per second on the CPU (median of "
    f"{repeats}; ops: {', '.join(s['op'] for s in OPS)}):"
  )
  for name, rate in rows:
    print(f"  {name:<46}{rate:>10.1f} ex/s{ours / rate:>8.2f}x")
  print("  (last column: medseg_jax rate / this row's rate)")


def main():
  xla_cpu.configure_flags()  # Before any JAX computation.
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--part", choices=("step", "throughput", "both"), default="both"
  )
  parser.add_argument(
    "--repeats", type=int, default=20, help="timed train steps per variant"
  )
  parser.add_argument(
    "--throughput-repeats", type=int, default=5, help="timed passes"
  )
  parser.add_argument(
    "--examples", type=int, default=64, help="examples per throughput pass"
  )
  args = parser.parse_args()
  print(f"devices: {jax.devices()}")
  if args.part in ("step", "both"):
    bench_step(args.repeats)
  if args.part in ("throughput", "both"):
    bench_throughput(args.examples, args.throughput_repeats)


if __name__ == "__main__":
  main()
