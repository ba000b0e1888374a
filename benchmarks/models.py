r"""Model zoo figures: parameters, XLA FLOPs, forward and train-step time.

  .venv/bin/python benchmarks/models.py                 # every entry
  .venv/bin/python benchmarks/models.py --only=unet,vnet --repeats=5

For each model at the stated input size (batch included) this prints the
parameter count (from ``jax.eval_shape``), the FLOPs of one forward pass and
of one train step as counted by XLA's cost analysis of the program lowered
with XLA's own kernels (the house kernels and oneDNN calls hide theirs),
and the median wall time of the jitted forward pass and train step (after
compilation and warm-up) on whatever devices JAX sees.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

# Run as a script from anywhere: make the repository importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.timing import XLA_KERNELS  # noqa: E402
from benchmarks.timing import flops  # noqa: E402
from medseg_jax import losses  # noqa: E402
from medseg_jax import models  # noqa: E402
from medseg_jax import xla_cpu  # noqa: E402
from medseg_jax.models import lowering  # noqa: E402

# (label, registry name, constructor kwargs, input shape [B, *S, C]).
ENTRIES = [
  (
    "unet",
    "unet",
    dict(features=(16, 32, 64, 128), norm="instance"),
    (8, 128, 128, 1),
  ),
  (
    "unet_paper",
    "unet",
    dict(features=(64, 128, 256, 512, 1024), norm="none"),
    (1, 512, 512, 1),
  ),
  (
    "attention_unet",
    "attention_unet",
    dict(features=(16, 32, 64, 128)),
    (8, 128, 128, 1),
  ),
  (
    "fcn8s_vgg16_w0.25",
    "fcn",
    dict(variant="8s", backbone="vgg16", width=0.25),
    (8, 128, 128, 1),
  ),
  (
    "deeplabv3_r50_w0.25",
    "deeplabv3",
    dict(backbone="resnet50", width=0.25, aspp_features=64),
    (8, 128, 128, 1),
  ),
  (
    "deeplabv3plus_r50_w0.25",
    "deeplabv3plus",
    dict(backbone="resnet50", width=0.25, aspp_features=64),
    (8, 128, 128, 1),
  ),
  (
    "resenc_unet",
    "resenc_unet",
    dict(
      features=(16, 32, 64, 128),
      blocks_per_stage=(1, 3, 4, 6),
      deep_supervision=True,
    ),
    (8, 128, 128, 1),
  ),
  (
    "mednext",
    "mednext",
    dict(size="S", base_features=16, deep_supervision=True),
    (8, 128, 128, 1),
  ),
  (
    "unet3d",
    "unet",
    dict(
      features=(4, 8, 16, 32),
      norm="instance",
      double_within_level=True,
      spatial_dims=3,
    ),
    (4, 32, 32, 32, 1),
  ),
  (
    "vnet",
    "vnet",
    dict(
      features=(8, 16, 32, 64),
      convs=(1, 2, 2, 2),
      norm="instance",
      spatial_dims=3,
    ),
    (2, 32, 32, 32, 1),
  ),
  # The zoo presets (configs/zoo.py), 2-D.
  (
    "unetr_zoo",
    "unetr",
    dict(
      spatial_dims=2,
      patch_size=16,
      hidden_size=192,
      mlp_dim=768,
      num_layers=8,
      num_heads=6,
      feature_size=16,
    ),
    (8, 128, 128, 1),
  ),
  (
    "swin_unetr_zoo",
    "swin_unetr",
    dict(spatial_dims=2, feature_size=24),
    (8, 128, 128, 1),
  ),
]


def _time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # Warm-up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(name, kwargs, shape, repeats):
  num_classes = 4
  model = models.get_model(
    name, num_classes=num_classes, in_channels=shape[-1], **kwargs
  )
  x = jnp.ones(shape, jnp.float32)
  labels = jnp.zeros(shape[:-1], jnp.int32)
  mask = jnp.ones(shape[:-1], jnp.float32)
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.key(0), x[:1], train=False)
  )
  num_params = sum(a.size for a in jax.tree.leaves(abstract["params"]))
  variables = model.init(jax.random.key(0), x[:1], train=False)
  loss_fn = losses.get_loss("ce_dice")
  tx = optax.adam(1e-3)
  opt_state = tx.init(variables["params"])

  def forward(variables, x):
    return model.apply(variables, x, train=False)

  def train_step(variables, opt_state, x):
    def objective(params):
      logits, updates = model.apply(
        {**variables, "params": params},
        x,
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": jax.random.key(1)},
      )
      return jnp.mean(loss_fn(logits, labels, mask)), updates

    (loss, updates), grads = jax.value_and_grad(objective, has_aux=True)(
      variables["params"]
    )
    new_updates, opt_state = tx.update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], new_updates)
    return {**variables, **updates, "params": params}, opt_state, loss

  # FLOPs from separate jit objects traced with XLA's own kernels.
  with lowering.override(**XLA_KERNELS):
    forward_flops = flops(jax.jit(forward).lower(variables, x))
    step_flops = flops(jax.jit(train_step).lower(variables, opt_state, x))
  forward_jit = jax.jit(forward)
  step_jit = jax.jit(train_step)
  forward_s = _time(forward_jit, variables, x, repeats=repeats)
  step_s = _time(step_jit, variables, opt_state, x, repeats=repeats)
  return num_params, forward_flops, step_flops, forward_s, step_s


def main():
  xla_cpu.configure_flags()  # Before any JAX computation.
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="", help="comma-separated labels")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  only = set(filter(None, args.only.split(",")))
  print(f"devices: {jax.devices()}")
  header = (
    f"{'model':<26}{'input':>20}{'params':>13}{'fwd GFLOP':>11}"
    f"{'step GFLOP':>12}{'fwd ms':>9}{'step ms':>9}"
  )
  print(header)
  print("-" * len(header))
  for label, name, kwargs, shape in ENTRIES:
    if only and label not in only:
      continue
    if name not in models.MODELS:
      print(f"{label:<26} (model {name!r} not registered; skipped)")
      continue
    params, fwd_flops, step_flops, fwd_s, step_s = measure(
      name, kwargs, shape, args.repeats
    )
    print(
      f"{label:<26}{'x'.join(map(str, shape)):>20}{params:>13,}"
      f"{fwd_flops / 1e9:>11.2f}{step_flops / 1e9:>12.2f}"
      f"{fwd_s * 1e3:>9.1f}{step_s * 1e3:>9.1f}",
      flush=True,
    )


if __name__ == "__main__":
  main()
