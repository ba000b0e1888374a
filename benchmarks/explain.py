r"""Explanation maps: medseg_jax.explain beside MONAI's monai.visualize.

  .venv/bin/python benchmarks/explain.py                     # 2-D 256x256
  .venv/bin/python benchmarks/explain.py --repeats=5 --window=16 --stride=8
  .venv/bin/python benchmarks/explain.py --only=occlusion,gradcam

The same network on both sides: the 2-D U-Net 16-32-64-128 with batch
norm (evaluation mode), 2 classes, one 256x256x1 image. PyTorch runs
`benchmarks/torch_twins.make_torch_unet`; its weights are copied into our
`UNet` and the logits compared before anything is timed.

The target is the same on both sides: the class-1 logit summed over the
voxels predicted as class 1 (the predicted mask). MONAI's classes take a
classifier's `[B, K]` output, so, as its users do for segmentation, the
network is wrapped in a module that returns the region sums of the logits,
`[1, K]`, and MONAI is asked for class 1:

  method          medseg_jax                    MONAI 1.6
  saliency        explain.saliency              VanillaGrad
  smoothgrad      explain.smoothgrad (25, .15)  SmoothGrad(n_samples=25)
  gradcam         explain.gradcam(layer=        GradCAM(target_layers=
                    "bottleneck")                 "net.bottleneck")
  gradcam_pp      explain.gradcam_pp            GradCAMpp
  occlusion       explain.occlusion(window,     OcclusionSensitivity(
                    stride, fill=0)               mask_size, overlap, mode=0.,
                                                  activate=False, n_batch=16)
  occlusion_full  the same, incremental=False    (the same MONAI call)
  integrated_gradients  (no MONAI counterpart; timed alone)

`occlusion` on this batch-norm U-Net is incremental (each occluded copy
recomputes only the activations its box changes, `explain.incremental`);
`occlusion_full` pushes every copy through the whole network.

Occlusion uses the same boxes on both sides (`--window`, `--stride`; MONAI's
`overlap = 1 - stride / window`) and the same batch of 16 occluded copies
per network call. Each map is computed once to compile (ours) or warm up
(MONAI), then `--repeats` times, ours and MONAI's alternating, so that a
shared machine slows both alike. MONAI is timed with each torch thread
count of `--torch_threads` (default: 1 and torch's default) in turn and
its fastest median counts, the favourable reading for the peer on a
shared machine. The table prints the median ms per map, the ratio (MONAI
ms / ours; above 1: medseg_jax is faster) and the Pearson correlation of
the two maps: 1 is the same map up to scale. MONAI's occlusion map is the
occluded score and ours the drop, so its sign is flipped first; MONAI's
CAMs go through its default normaliser (`1 - min-max`), which inverts
them, so theirs is -1. torch and monai are benchmark-only extras (`make
bench-deps`).
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
import scipy.ndimage

# Run as a script from anywhere: make the repository importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.torch_twins import flax_variables_from_torch  # noqa: E402
from benchmarks.torch_twins import make_torch_unet  # noqa: E402
from medseg_jax import explain  # noqa: E402
from medseg_jax import models  # noqa: E402
from medseg_jax import xla_cpu  # noqa: E402

FEATURES = (16, 32, 64, 128)
NUM_CLASSES = 2
CLASS = 1
METHODS = (
  "saliency",
  "smoothgrad",
  "integrated_gradients",
  "gradcam",
  "gradcam_pp",
  "occlusion",
  "occlusion_full",
)


def test_image(size: int, seed: int = 0) -> np.ndarray:
  """`f32[1, size, size, 1]`: smoothed noise, zero mean, unit variance."""
  rng = np.random.default_rng(seed)
  x = scipy.ndimage.gaussian_filter(rng.standard_normal((size, size)), 4)
  x = (x - x.mean()) / x.std()
  return x[None, ..., None].astype(np.float32)


def ours(model, method: str, args) -> tuple:
  """(jitted map function, its options) for one of our methods."""
  options = {
    "smoothgrad": dict(samples=args.samples, noise_level=0.15),
    "integrated_gradients": dict(steps=args.steps),
    "gradcam": dict(layer="bottleneck"),
    "gradcam_pp": dict(layer="bottleneck"),
    "occlusion": dict(
      window=args.window, stride=args.stride, fill=0.0, batch_size=16
    ),
  }
  target = explain.Target(class_index=CLASS)
  if method == "occlusion_full":  # every copy through the whole network
    full = dict(options["occlusion"], incremental=False)
    return explain.make_explainer(model, "occlusion", target, **full)
  return explain.make_explainer(
    model, method, target, **options.get(method, {})
  )


def monai_method(method: str, wrapped, args):
  """A zero-argument-free callable `x -> map` with MONAI's class, or None."""
  import monai.visualize as mv  # noqa: PLC0415

  if method == "saliency":
    vanilla = mv.VanillaGrad(wrapped)
    return lambda x: vanilla(x, index=CLASS)[0, 0]
  if method == "smoothgrad":
    smooth = mv.SmoothGrad(
      wrapped,
      stdev_spread=0.15,
      n_samples=args.samples,
      magnitude=True,
      verbose=False,
    )
    return lambda x: smooth(x, index=CLASS)[0, 0]
  if method in ("gradcam", "gradcam_pp"):
    cls = mv.GradCAM if method == "gradcam" else mv.GradCAMpp
    cam = cls(nn_module=wrapped, target_layers="net.bottleneck")
    return lambda x: cam(x, class_idx=CLASS)[0, 0]
  if method in ("occlusion", "occlusion_full"):
    occ = mv.OcclusionSensitivity(
      nn_module=wrapped,
      mask_size=args.window,
      n_batch=16,
      verbose=False,
      mode=0.0,
      overlap=1.0 - args.stride / args.window,
      activate=False,
    )

    def occlusion_map(x):
      # MONAI 1.6 returns [1, K, H, W] for a [1, K] output (its docstring
      # says B1HWN); take class CLASS either way.
      out = occ(x)[0][0]
      out = out[..., CLASS] if out.shape[-1] == NUM_CLASSES else out[CLASS]
      return -out.reshape(out.shape[-2:])

    return occlusion_map
  return None


def main() -> None:
  xla_cpu.configure_flags()  # Before any JAX computation.
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--samples", type=int, default=25)
  parser.add_argument("--steps", type=int, default=32)
  parser.add_argument("--window", type=int, default=32)
  parser.add_argument("--stride", type=int, default=16)
  parser.add_argument("--only", default=",".join(METHODS))
  parser.add_argument("--skip_monai", action="store_true")
  parser.add_argument(
    "--torch_threads",
    default="1,all",
    help="torch thread counts to time MONAI with, comma-separated ('all': "
    "torch's default); the fastest counts. On a loaded machine one thread "
    "can beat several (OpenMP barriers under oversubscription).",
  )
  args = parser.parse_args()
  methods = [m for m in args.only.split(",") if m]
  for m in methods:
    if m not in METHODS:
      raise SystemExit(f"--only: unknown method {m!r}; valid: {METHODS}.")

  image = test_image(args.size)
  model = models.get_model(
    "unet",
    num_classes=NUM_CLASSES,
    spatial_dims=2,
    in_channels=1,
    features=FEATURES,
    norm="batch",
  )
  import torch  # noqa: PLC0415

  default_threads = torch.get_num_threads()
  thread_counts = [
    default_threads if t == "all" else int(t)
    for t in args.torch_threads.split(",")
  ]
  torch.manual_seed(0)
  net = make_torch_unet(FEATURES, 1, NUM_CLASSES, "batch", 2).eval()
  # Non-trivial running statistics, so evaluation mode is tested too.
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.1, 0.1)
        module.running_var.uniform_(0.5, 1.5)
    # Shift the class-1 bias so that about 30 % of the image is class 1 (a
    # random network predicts one class almost everywhere).
    x0 = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 1)))
    margin = net(x0)[0, 1] - net(x0)[0, 0]
    net.head.bias[1] -= torch.quantile(margin.flatten(), 0.7)
  variables = flax_variables_from_torch(net, len(FEATURES), 2)
  variables = jax.tree.map(jnp.asarray, variables)
  x_jax = jnp.asarray(image)
  x_torch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 1)))
  logits = np.asarray(model.apply(variables, x_jax, train=False))
  with torch.no_grad():
    torch_logits = np.moveaxis(net(x_torch).numpy(), 1, -1)
  diff = np.abs(logits - torch_logits).max() / np.abs(torch_logits).max()
  region = np.argmax(logits, -1) == CLASS
  print(
    f"2-D U-Net {'-'.join(map(str, FEATURES))}, batch norm (eval), input "
    f"1x{args.size}x{args.size}x1, class {CLASS} over its predicted mask "
    f"({region.mean():.0%} of the image); jax {jax.__version__} on "
    f"{jax.devices()[0].platform}, torch {torch.__version__} "
    f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs"
  )
  print(f"same weights: logits differ by {diff:.1e} (relative, max)")
  if diff > 1e-4 or not region.any():
    raise SystemExit("The networks differ, or the region is empty.")

  class RegionScore(torch.nn.Module):
    """What a MONAI user writes for segmentation: `[B, K]` region sums."""

    def __init__(self, net, region):
      super().__init__()
      self.net = net
      self.register_buffer("region", torch.from_numpy(region[:, None]))

    def forward(self, x):
      return (self.net(x) * self.region).sum(dim=(2, 3))

  wrapped = RegionScore(net, region.astype(np.float32)).eval()

  rows = []
  for method in methods:
    fn = ours(model, method, args)
    t0 = time.perf_counter()
    ours_map = np.asarray(jax.block_until_ready(fn(variables, x_jax)))[0]
    compile_s = time.perf_counter() - t0
    peer = None if args.skip_monai else monai_method(method, wrapped, args)
    peer_map = None
    if peer is not None:
      peer_map = peer(x_torch.clone()).detach().numpy()
    times = {"ours": []} | {n: [] for n in thread_counts}
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(variables, x_jax))
      times["ours"].append(time.perf_counter() - t0)
      for n in thread_counts if peer is not None else ():
        torch.set_num_threads(n)
        t0 = time.perf_counter()
        peer(x_torch.clone())
        times[n].append(time.perf_counter() - t0)
    torch.set_num_threads(default_threads)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items() if v}
    ms = {"ours": ms.pop("ours")} | (
      {"monai": min(ms.values()), "threads": min(ms, key=ms.get)} if ms else {}
    )
    corr = None
    if peer_map is not None:
      a, b = ours_map.ravel(), np.asarray(peer_map, np.float64).ravel()
      if method in ("saliency", "smoothgrad"):
        a = np.abs(a)  # Ours through heatmap: |grad|; MONAI: signed/RMS.
        b = np.abs(b)
      corr = float(np.corrcoef(a, b)[0, 1]) if a.size == b.size else np.nan
    rows.append((method, compile_s, ms, corr))
    peer_ms = ms.get("monai")
    print(
      f"  {method}: medseg_jax {ms['ours']:.1f} ms"
      + (f", MONAI {peer_ms:.1f} ms" if peer_ms else ""),
      flush=True,
    )

  print()
  print(f"median ms per map over {args.repeats} alternating repeats:")
  print(
    f"  {'method':22s} {'compile s':>9s} {'medseg_jax':>11s} "
    f"{'MONAI':>9s} {'ratio':>6s} {'corr':>6s} {'threads':>7s}"
  )
  for method, compile_s, ms, corr in rows:
    peer = ms.get("monai")
    text = f"  {method:22s} {compile_s:9.1f} {ms['ours']:11.1f} "
    if peer is None:
      text += f"{'-':>9s} {'-':>6s} {'-':>6s}"
    else:
      text += f"{peer:9.1f} {peer / ms['ours']:6.2f} {corr:6.3f} "
      text += f"{ms['threads']:7d}"
    print(text)
  print("  ratio: MONAI ms / medseg_jax ms (>1: medseg_jax is faster)")
  print(
    "  corr: Pearson correlation of the two maps (-1: MONAI's default "
    "normaliser, 1 - min-max, inverts its CAMs)"
  )
  print("  threads: the torch thread count of MONAI's fastest median")
  print(
    f"  occlusion: {args.window}x{args.window} boxes, stride {args.stride}; "
    f"SmoothGrad: {args.samples} samples; IG: {args.steps} steps"
  )


if __name__ == "__main__":
  main()
