r"""Train-step speed: medseg_jax beside PyTorch eager and MONAI, one run.

  .venv/bin/python benchmarks/train_throughput.py                # 2-D
  .venv/bin/python benchmarks/train_throughput.py --dims=3       # 3-D
  .venv/bin/python benchmarks/train_throughput.py --steps=20 --skip_monai
  .venv/bin/python benchmarks/train_throughput.py --profile --whole_process=100
  .venv/bin/python benchmarks/train_throughput.py --lowering=max_pool=xla

The reference network (issue 7): U-Net, widths 16-32-64-128, two 3^d
convolutions + batch norm + ReLU per level, 2^d max pooling, 2^d
transposed-convolution up-sampling, 1^d head, Adam (lr 1e-3), mean
cross-entropy over 4 classes. 2-D: batch 8 of 128x128x1; 3-D: batch 2 of
64^3 x 1.

* medseg_jax: `medseg_jax.models.UNet(norm="batch")`, one jitted train
  step (forward, backward, Adam update, batch-norm statistics) with donated
  state.
* PyTorch eager: `benchmarks/torch_twins.make_torch_unet`, the same
  network; channels-first and channels-last memory formats. Before timing,
  its weights are copied into ours and the two losses on the same batch are
  compared (`--check`), so the maths are identical.
* MONAI `BasicUNet` (its default widths 32-32-64-128-256-32, so a wider
  network): the tool users reach for, for context.

All runs alternate, step by step, so a shared machine slows them alike.
Prints per library the compile (or first-step) time, the median ms per step
over `--steps` steps after `--warmup` steps, and the speed ratio (PyTorch ms
/ medseg_jax ms; above 1 means medseg_jax is faster). `--profile` then times
every 3^d convolution of the network on its own (forward, input gradient,
weight gradient) in XLA and PyTorch, which is where the gap comes from. torch and monai are
benchmark-only extras (`make bench-deps`).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Run as a script from anywhere: make the repository importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.timing import median_ms  # noqa: E402
from benchmarks.torch_twins import flax_variables_from_torch  # noqa: E402
from benchmarks.torch_twins import make_torch_unet  # noqa: E402
from medseg_jax import models  # noqa: E402
from medseg_jax import xla_cpu  # noqa: E402
from medseg_jax.models import lowering  # noqa: E402

FEATURES = (16, 32, 64, 128)
NUM_CLASSES = 4
SHAPES = {2: (8, 128, 128, 1), 3: (2, 64, 64, 64, 1)}


def jax_trainer(shape, dims, variables=None, dtype="float32"):
  """(state, jitted step) for our U-Net; `variables` overrides the init."""
  model = models.get_model(
    "unet",
    num_classes=NUM_CLASSES,
    spatial_dims=dims,
    in_channels=1,
    features=FEATURES,
    norm="batch",
    dtype=jnp.dtype(dtype),
  )
  if variables is None:
    variables = model.init(
      jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False
    )
  tx = optax.adam(1e-3)
  params = variables["params"]
  state = (params, variables["batch_stats"], tx.init(params))

  def loss_fn(params, batch_stats, image, label):
    logits, updates = model.apply(
      {"params": params, "batch_stats": batch_stats},
      image,
      train=True,
      mutable=["batch_stats"],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), label
    ).mean()
    return loss, updates["batch_stats"]

  def step(state, image, label):
    params, batch_stats, opt_state = state
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, batch_stats, image, label
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, batch_stats, opt_state), loss

  return state, jax.jit(step, donate_argnums=0)


def torch_trainer(net, torch_image, torch_label, memory_format):
  """A closure running one eager Adam step; returns the loss."""
  import torch  # noqa: PLC0415

  net = net.to(memory_format=memory_format).train()
  image = torch_image.contiguous(memory_format=memory_format)
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
  criterion = torch.nn.CrossEntropyLoss()

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = criterion(net(image), torch_label)
    loss.backward()
    optimizer.step()
    return loss.item()

  return step


def conv_shapes(shape, dims):
  """(spatial size, C_in, C_out) of every 3^d convolution in the network."""
  batch, size = shape[0], shape[1]
  out = []
  cin = shape[-1]
  for level, f in enumerate(FEATURES):  # Encoder and bottleneck.
    s = size // 2**level
    out += [(batch, s, cin, f), (batch, s, f, f)]
    cin = f
  for level in reversed(range(len(FEATURES) - 1)):  # Decoder.
    f = FEATURES[level]
    s = size // 2**level
    out += [(batch, s, 2 * f, f), (batch, s, f, f)]
  return out


def time_xla_conv(batch, size, cin, cout, dims, repeats, dtype="float32"):
  """(forward, input-gradient, weight-gradient) ms of one 3^d conv.

  Lowered as our models lower it: in 3-D on the CPU that is the
  depth-stacked 2-D convolution (`lowering.depth_stacked_conv3d`), and the
  weight gradient is oneDNN's where `make onednn` built it.
  """
  impl = lowering.conv_impl_for(
    "auto", spatial_dims=dims, kernel_size=3, strides=1, padding="SAME"
  )
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, *(size,) * dims, cin)), dtype)
  k = jnp.asarray(rng.standard_normal((3,) * dims + (cin, cout)), dtype)
  dy = jnp.asarray(rng.standard_normal((*x.shape[:-1], cout)), dtype)

  def conv(x, k):
    if impl == "depth_stacked":
      return lowering.depth_stacked_conv3d(x, k)
    return lowering.conv_general(x, k, (1,) * dims, "SAME", (1,) * dims)

  fwd = jax.jit(conv)
  # Arrays are arguments, not closed-over constants, which XLA would try to
  # constant-fold at compile time.
  grad_x = jax.jit(lambda x, k, dy: jax.vjp(lambda x: conv(x, k), x)[1](dy)[0])
  grad_k = jax.jit(lambda x, k, dy: jax.vjp(lambda k: conv(x, k), k)[1](dy)[0])
  return (
    median_ms(lambda: jax.block_until_ready(fwd(x, k)), repeats),
    median_ms(lambda: jax.block_until_ready(grad_x(x, k, dy)), repeats),
    median_ms(lambda: jax.block_until_ready(grad_k(x, k, dy)), repeats),
  )


def time_torch_conv(batch, size, cin, cout, dims, repeats, dtype="float32"):
  """(forward, forward + backward) ms of one PyTorch channels-last conv."""
  import torch  # noqa: PLC0415

  dtype = getattr(torch, dtype)
  fmt = {2: torch.channels_last, 3: torch.channels_last_3d}[dims]
  conv_cls = {2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dims]
  layer = conv_cls(cin, cout, 3, padding=1, bias=False)
  layer = layer.to(dtype=dtype, memory_format=fmt)
  x = torch.randn(batch, cin, *(size,) * dims, dtype=dtype)
  x = x.contiguous(memory_format=fmt).requires_grad_(True)
  dy = torch.randn(batch, cout, *(size,) * dims, dtype=dtype)
  dy = dy.contiguous(memory_format=fmt)

  def forward():
    with torch.no_grad():
      layer(x)

  return (
    median_ms(forward, repeats),
    median_ms(lambda: layer(x).backward(dy), repeats),
  )


def profile_convs(shape, dims, repeats, with_torch, dtype="float32"):
  """Times each 3^d convolution of the network on its own."""
  print()
  print(f"per-layer profile ({dtype}), median ms:")
  header = f"  {'layer':>18s}   XLA fwd / grad x / grad w"
  if with_torch:
    header += "   PyTorch fwd / fwd+bwd"
  print(header)
  totals = np.zeros(4)
  for batch, size, cin, cout in conv_shapes(shape, dims):
    xla = time_xla_conv(batch, size, cin, cout, dims, repeats, dtype)
    text = f"  {size:>4d}^{dims} {cin:>4d}->{cout:<4d}    "
    text += f"{xla[0]:7.1f} / {xla[1]:6.1f} / {xla[2]:6.1f}"
    peer = (0.0, 0.0)
    if with_torch:
      peer = time_torch_conv(batch, size, cin, cout, dims, repeats, dtype)
      text += f"   {peer[0]:11.1f} / {peer[1]:7.1f}"
    totals += np.array([*xla, peer[1]])
    print(text)
  line = f"  {'sum':>18s}    {totals[0]:7.1f} / {totals[1]:6.1f} / "
  line += f"{totals[2]:6.1f}   (XLA fwd+bwd {totals[:3].sum():.1f} ms"
  if with_torch:
    line += f", PyTorch fwd+bwd {totals[3]:.1f} ms"
  print(line + ")")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--skip_monai", action="store_true")
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument(
    "--profile",
    action="store_true",
    help="also time every 3^d convolution of the network on its own",
  )
  parser.add_argument(
    "--lowering",
    default="",
    help="project kernels to force, e.g. 'max_pool=xla,batch_norm_sums=sum' "
    "(fields and values: medseg_jax.models.lowering.override)",
  )
  parser.add_argument(
    "--whole_process",
    type=int,
    default=0,
    metavar="N",
    help="also time, as separate processes, a whole N-step run of each "
    "library (imports, set-up, compile or first step, N steps)",
  )
  parser.add_argument(
    "--only",
    choices=("jax", "torch"),
    help=argparse.SUPPRESS,  # One side of --whole_process.
  )
  parser.add_argument(
    "--check",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="check that both networks give the same loss on the same weights",
  )
  args = parser.parse_args()
  # Before any JAX computation: the flags measured for 2-D or 3-D.
  xla_cpu.configure_flags(spatial_dims=args.dims)
  forced = dict(
    item.split("=", 1) for item in args.lowering.split(",") if item.strip()
  )
  with lowering.override(**forced):
    if args.only:
      run_alone(args)
    else:
      run(args)


def run_alone(args) -> None:
  """One library's whole `--steps`-step run, for `--whole_process`."""
  shape = SHAPES[args.dims]
  rng = np.random.default_rng(0)
  image = rng.standard_normal(shape).astype(np.float32)
  label = rng.integers(0, NUM_CLASSES, shape[:-1]).astype(np.int32)
  if args.only == "jax":
    state, step = jax_trainer(shape, args.dims, dtype=args.dtype)
    image, label = jnp.asarray(image), jnp.asarray(label)
    for _ in range(args.steps):
      state, loss = step(state, image, label)
    float(loss)
    return
  import torch  # noqa: PLC0415

  torch.manual_seed(0)
  fmt = {2: torch.channels_last, 3: torch.channels_last_3d}[args.dims]
  step = torch_trainer(
    make_torch_unet(FEATURES, 1, NUM_CLASSES, "batch", args.dims),
    torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 1))),
    torch.from_numpy(label.astype(np.int64)),
    fmt,
  )
  for _ in range(args.steps):
    step()


def whole_process(args) -> None:
  """Wall time of a whole run per library, each in a fresh process."""
  base = [sys.executable, __file__, f"--dims={args.dims}"]
  base += [f"--steps={args.whole_process}", f"--dtype={args.dtype}"]
  if args.lowering:
    base.append(f"--lowering={args.lowering}")
  sides = {"medseg_jax": "jax", "PyTorch eager, channels-last": "torch"}
  if args.skip_torch:
    del sides["PyTorch eager, channels-last"]
  wall = {}
  for name, side in sides.items():
    t0 = time.perf_counter()
    subprocess.run([*base, f"--only={side}"], check=True, capture_output=True)
    wall[name] = time.perf_counter() - t0
  print()
  print(
    f"whole process, {args.whole_process} steps (Python start, imports, "
    "set-up, compile or first step, steps):"
  )
  for name, seconds in wall.items():
    ratio = seconds / wall["medseg_jax"]
    print(f"  {name:48s} {seconds:8.1f} s {ratio:6.2f}")


def run(args) -> None:
  dims = args.dims
  shape = SHAPES[dims]
  rng = np.random.default_rng(0)
  image = rng.standard_normal(shape).astype(np.float32)
  label = rng.integers(0, NUM_CLASSES, shape[:-1]).astype(np.int32)
  print(
    f"{dims}-D U-Net {'-'.join(map(str, FEATURES))}, batch norm, input "
    f"{'x'.join(map(str, shape))}, {NUM_CLASSES} classes, Adam, CE; "
    f"jax {jax.__version__} on {jax.devices()[0].platform}, "
    f"{os.cpu_count()} CPUs"
  )

  steps = {}  # name -> zero-argument callable running one step.
  first = {}  # name -> seconds of the first call (compile / warm-up).

  state, jax_step = jax_trainer(shape, dims, dtype=args.dtype)
  image_dev, label_dev = jnp.asarray(image), jnp.asarray(label)
  params_count = sum(x.size for x in jax.tree.leaves(state[0]))
  t0 = time.perf_counter()
  compiled = jax_step.lower(state, image_dev, label_dev).compile()
  first["medseg_jax"] = time.perf_counter() - t0
  holder = {"state": state}

  def run_jax():
    holder["state"], loss = compiled(holder["state"], image_dev, label_dev)
    return float(loss)

  steps["medseg_jax"] = run_jax

  if not args.skip_torch:
    import torch  # noqa: PLC0415

    torch.manual_seed(0)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    torch_image = torch.from_numpy(
      np.ascontiguousarray(np.moveaxis(image, -1, 1))
    )
    torch_label = torch.from_numpy(label.astype(np.int64))
    channels_last = {2: torch.channels_last, 3: torch.channels_last_3d}[dims]
    nets = {}
    for fmt_name, fmt in (
      ("channels-first", torch.contiguous_format),
      ("channels-last", channels_last),
    ):
      torch.manual_seed(0)
      net = make_torch_unet(FEATURES, 1, NUM_CLASSES, "batch", dims)
      nets[fmt_name] = net
      steps[f"PyTorch eager, {fmt_name}"] = torch_trainer(
        net, torch_image, torch_label, fmt
      )
    torch_params = sum(p.numel() for p in nets["channels-first"].parameters())
    print(f"parameters: medseg_jax {params_count:,}, PyTorch {torch_params:,}")
    if torch_params != params_count:
      raise SystemExit("The two networks differ in size; not comparable.")
    if args.check:
      # Same weights, same batch, training mode: the same loss.
      variables = flax_variables_from_torch(
        nets["channels-first"], len(FEATURES), dims
      )
      check_state, check_step = jax_trainer(shape, dims, variables)
      _, jax_loss = check_step(check_state, image_dev, label_dev)
      net = make_torch_unet(FEATURES, 1, NUM_CLASSES, "batch", dims)
      net.load_state_dict(nets["channels-first"].state_dict())
      with torch.no_grad():
        torch_loss = torch.nn.functional.cross_entropy(
          net.train()(torch_image), torch_label
        ).item()
      rel = abs(float(jax_loss) - torch_loss) / abs(torch_loss)
      print(
        f"same weights, same batch: loss medseg_jax {float(jax_loss):.6f}, "
        f"PyTorch {torch_loss:.6f} (relative difference {rel:.1e})"
      )
      if rel > 1e-4:
        raise SystemExit("The networks compute different losses.")
  if not args.skip_monai and not args.skip_torch:
    from monai.networks.nets import BasicUNet  # noqa: PLC0415

    torch.manual_seed(0)
    monai_net = BasicUNet(
      spatial_dims=dims, in_channels=1, out_channels=NUM_CLASSES
    )
    count = sum(p.numel() for p in monai_net.parameters())
    name = f"MONAI BasicUNet ({count:,} params), channels-first"
    steps[name] = torch_trainer(
      monai_net, torch_image, torch_label, torch.contiguous_format
    )

  for name, fn in steps.items():
    if name not in first:
      t0 = time.perf_counter()
      fn()
      first[name] = time.perf_counter() - t0
  for _ in range(args.warmup):
    for fn in steps.values():
      fn()
  times = {name: [] for name in steps}
  for _ in range(args.steps):
    for name, fn in steps.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  median = {name: 1e3 * statistics.median(t) for name, t in times.items()}
  ours = median["medseg_jax"]
  print()
  print(f"median of {args.steps} steps after {args.warmup} warm-up steps:")
  print(
    f"  {'library':48s} {'first/compile s':>15s} {'ms/step':>9s} {'ratio':>6s}"
  )
  for name in steps:
    print(
      f"  {name:48s} {first[name]:15.2f} {median[name]:9.1f} "
      f"{median[name] / ours:6.2f}"
    )
  print(
    "  ratio: that library's ms per step / medseg_jax's (>1: we are faster)"
  )
  torch_best = [v for k, v in median.items() if k.startswith("PyTorch")]
  if torch_best:
    print(f"medseg_jax vs best PyTorch format: {min(torch_best) / ours:.2f}x")
  if args.profile:
    profile_convs(shape, dims, args.steps, not args.skip_torch, args.dtype)
  if args.whole_process:
    whole_process(args)


if __name__ == "__main__":
  main()
