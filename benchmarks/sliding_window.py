r"""Sliding-window inference: medseg_jax beside MONAI on one 3-D volume.

  .venv/bin/python benchmarks/sliding_window.py              # defaults below
  .venv/bin/python benchmarks/sliding_window.py --repeats=5 --norm=instance
  .venv/bin/python benchmarks/sliding_window.py --skip_monai

A 160x192x160 volume with 1 channel, 96^3 windows, overlap 0.5, Gaussian
weighting, sw_batch_size 4, through the same 3-D U-Net in both libraries
(two 3^3 convolutions + normalisation + ReLU per level, 2^3 max pooling,
2^3 transposed-convolution up-sampling, skip connections concatenated,
1^3 head; widths 8-16-32-64; softmax probabilities blended):

* medseg_jax: `medseg_jax.models.UNet` through
  `medseg_jax.evaluation.inference.sliding_window_predict` (device and host
  accumulation).
* MONAI: `monai.inferers.sliding_window_inference` with the PyTorch module
  `TorchUNet3D` below (channels first, `torch.inference_mode`).

Both place 27 windows (3 per axis) here. Prints the median wall time of
`--repeats` runs after one warm-up run (the runs of the two libraries are
interleaved, since the machine is shared), the network alone on the same
windows (where the time goes), and the ratio MONAI time / medseg_jax time
(> 1 means medseg_jax is faster). torch and monai are benchmark-only extras.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Run as a script from anywhere: make the repository importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.torch_twins import make_torch_unet  # noqa: E402
from medseg_jax import models  # noqa: E402
from medseg_jax import xla_cpu  # noqa: E402
from medseg_jax.evaluation import inference  # noqa: E402


def parse_ints(text: str) -> tuple[int, ...]:
  return tuple(int(t) for t in text.split(","))


def main() -> None:
  xla_cpu.configure_flags(spatial_dims=3)  # Before any JAX computation.
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", type=parse_ints, default=(160, 192, 160))
  parser.add_argument("--window", type=int, default=96)
  parser.add_argument("--overlap", type=float, default=0.5)
  parser.add_argument("--sw_batch_size", type=int, default=4)
  parser.add_argument("--mode", default="gaussian")
  parser.add_argument("--features", type=parse_ints, default=(8, 16, 32, 64))
  parser.add_argument("--norm", default="batch")
  parser.add_argument("--num_classes", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip_monai", action="store_true")
  parser.add_argument(
    "--host_full",
    action="store_true",
    help="also time the whole run with host accumulation",
  )
  args = parser.parse_args()

  window = (args.window,) * 3
  rng = np.random.default_rng(0)
  image = rng.standard_normal((*args.shape, 1)).astype(np.float32)
  starts = inference.window_starts(args.shape, window, args.overlap)
  num_batches = -(-len(starts) // args.sw_batch_size)
  print(
    f"volume {args.shape} x1, window {window}, overlap {args.overlap}, "
    f"mode {args.mode}, sw_batch_size {args.sw_batch_size}: "
    f"{len(starts)} windows in {num_batches} batches; U-Net widths "
    f"{args.features}, norm {args.norm}, {args.num_classes} classes"
  )
  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform}, "
    f"{os.cpu_count()} CPUs"
  )

  # ---- medseg_jax ---------------------------------------------------------
  model = models.get_model(
    "unet",
    num_classes=args.num_classes,
    spatial_dims=3,
    in_channels=1,
    features=args.features,
    norm=args.norm,
  )
  variables = model.init(
    jax.random.key(0),
    jnp.zeros((1, *window, 1), jnp.float32),
    train=False,
  )
  predict_fn = inference.make_window_predictor(model, variables)
  image_dev = jnp.asarray(image)

  def run_jax(accumulate, fn=predict_fn):
    out = inference.sliding_window_predict(
      fn,
      image_dev,
      window=window,
      overlap=args.overlap,
      sw_batch_size=args.sw_batch_size,
      mode=args.mode,
      accumulate=accumulate,
    )
    return jax.block_until_ready(out)

  # A predictor that costs nothing isolates the blending (window extraction,
  # weighting, accumulation, division) from the network.
  @jax.jit
  def trivial_fn(x):
    return jnp.broadcast_to(x[..., :1], (*x.shape[:-1], args.num_classes))

  windows = jnp.asarray(
    rng.standard_normal((args.sw_batch_size, *window, 1)).astype(np.float32)
  )

  runs = {
    "medseg_jax blending only (device)": lambda: run_jax("device", trivial_fn),
    "medseg_jax blending only (host)": lambda: run_jax("host", trivial_fn),
    "medseg_jax (device accumulation)": lambda: run_jax("device"),
  }
  if args.host_full:
    runs["medseg_jax (host accumulation)"] = lambda: run_jax("host")
  # The network alone: one batch, scaled by the number of batches.
  per_batch = {
    "medseg_jax network only": lambda: jax.block_until_ready(
      predict_fn(windows)
    )
  }

  # ---- MONAI --------------------------------------------------------------
  if not args.skip_monai:
    import monai  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from monai.inferers import sliding_window_inference  # noqa: PLC0415

    print(
      f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
      f"monai {monai.__version__}"
    )
    torch.manual_seed(0)
    net = make_torch_unet(args.features, 1, args.num_classes, args.norm).eval()
    image_t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0)))
    image_t = image_t[None]  # [1, C, D, H, W]
    windows_t = torch.from_numpy(np.moveaxis(np.asarray(windows), -1, 1).copy())

    def torch_predictor(x):
      return torch.softmax(net(x), dim=1)

    def run_monai():
      with torch.inference_mode():
        return sliding_window_inference(
          image_t,
          roi_size=window,
          sw_batch_size=args.sw_batch_size,
          predictor=torch_predictor,
          overlap=args.overlap,
          mode=args.mode,
          sigma_scale=0.125,
        )

    def run_torch_net():
      with torch.inference_mode():
        torch_predictor(windows_t)

    runs["MONAI"] = run_monai
    per_batch["PyTorch network only"] = run_torch_net

  # Warm-up (compilation, allocator), then interleaved timed runs.
  for name, fn in {**runs, **per_batch}.items():
    t0 = time.perf_counter()
    fn()
    print(f"warm-up {name}: {time.perf_counter() - t0:.2f} s", flush=True)
  times = {name: [] for name in (*runs, *per_batch)}
  for _ in range(args.repeats):
    for name, fn in runs.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
    for name, fn in per_batch.items():
      t0 = time.perf_counter()
      fn()
      times[name].append((time.perf_counter() - t0) * num_batches)
  median = {name: statistics.median(t) for name, t in times.items()}
  print()
  print(f"median of {args.repeats} runs (all runs in s):")
  for name, t in times.items():
    runs_text = ", ".join(f"{x:.2f}" for x in t)
    print(f"  {name:36s} {median[name]:8.2f} s   [{runs_text}]")
  print("  (network only: one batch of windows, times the number of batches)")
  jax_full = median["medseg_jax (device accumulation)"]
  jax_net = median["medseg_jax network only"]
  print(
    f"  medseg_jax: network {jax_net:.2f} s, the rest "
    f"{jax_full - jax_net:.2f} s"
  )
  if "MONAI" in median:
    torch_net = median["PyTorch network only"]
    print(
      f"  MONAI: network {torch_net:.2f} s, the rest "
      f"{median['MONAI'] - torch_net:.2f} s"
    )
    print()
    print(
      f"speed ratio MONAI time / medseg_jax time: "
      f"{median['MONAI'] / jax_full:.2f}x "
      f"(network alone: {torch_net / jax_net:.2f}x)"
    )


if __name__ == "__main__":
  main()
