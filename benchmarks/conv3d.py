r"""3-D convolutions on the CPU: XLA's own lowering against the stacked 2-D form.

  .venv/bin/python benchmarks/conv3d.py
  .venv/bin/python benchmarks/conv3d.py --repeats=10

For 3^3 stride-1 'SAME' convolutions at the shapes of the CPU-sized 3-D
U-Nets, prints the median ms of the jitted forward pass and of forward plus
backward (gradients for input and kernel) for `lax.conv_general_dilated`
on the 3-D input ("xla") and for `lowering.depth_stacked_conv3d` (what
`layers.Conv(impl="auto")` runs on CPU), their ratio, and the largest
relative difference of the outputs.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

# Run as a script from anywhere: make the repository importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.timing import median_ms  # noqa: E402
from medseg_jax import xla_cpu  # noqa: E402
from medseg_jax.models import lowering  # noqa: E402

# (batch, edge, C_in, C_out).
SHAPES = (
  (4, 32, 4, 4),
  (4, 32, 8, 16),
  (4, 32, 16, 16),
  (4, 16, 16, 32),
  (4, 8, 32, 64),
  (2, 64, 8, 8),
  (2, 64, 16, 8),
)


def xla_conv3d(x, kernel):
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
  )


def timings(conv, x, kernel, repeats):
  """(forward ms, forward + backward ms) of one convolution function."""

  def loss(x, kernel):
    return jnp.sum(conv(x, kernel) ** 2)

  forward = jax.jit(conv)
  both = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return (
    median_ms(lambda: jax.block_until_ready(forward(x, kernel)), repeats),
    median_ms(lambda: jax.block_until_ready(both(x, kernel)), repeats),
  )


def main() -> None:
  xla_cpu.configure_flags(spatial_dims=3)  # Before any JAX computation.
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
  print(
    f"  {'B x edge^3, C_in->C_out':>24s}   xla fwd / f+b ms   "
    "stacked fwd / f+b ms   speed-up fwd / f+b   rel. diff"
  )
  for batch, edge, cin, cout in SHAPES:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, edge, edge, edge, cin)))
    x = x.astype(jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 3, cin, cout)))
    kernel = kernel.astype(jnp.float32)
    reference = xla_conv3d(x, kernel)
    stacked = lowering.depth_stacked_conv3d(x, kernel)
    diff = float(
      jnp.max(jnp.abs(reference - stacked)) / jnp.max(jnp.abs(reference))
    )
    xla = timings(xla_conv3d, x, kernel, args.repeats)
    ours = timings(lowering.depth_stacked_conv3d, x, kernel, args.repeats)
    print(
      f"  {f'{batch} x {edge}^3, {cin}->{cout}':>24s}   "
      f"{xla[0]:7.1f} / {xla[1]:7.1f}    {ours[0]:7.1f} / {ours[1]:7.1f}      "
      f"{xla[0] / ours[0]:5.1f}x / {xla[1] / ours[1]:5.1f}x   {diff:.1e}"
    )


if __name__ == "__main__":
  main()
