"""Fused batch norm (+ ReLU) for the CPU, as XLA FFI custom calls.

XLA:CPU lowers training-mode batch norm followed by a ReLU as several
passes over the activation: it writes the squares out before summing them,
takes the two channel sums as matrix-vector products, normalises in
another pass, and does the same again in the backward pass (about 60 ms of
the 2-D U-Net's 200 ms train step; docs/cpu_performance.md).
`native/cpu_kernels.cc` does the forward pass in two reads of `x` and one
write, and the backward pass in two reads of `x` and `dy` and one write,
with the ReLU fused and its mask recomputed from `x`. Threads come from
XLA's own intra-op pool.

The library needs only a C++17 compiler and JAX's FFI headers; the set-up
step (`make .venv/.installed`, or `python -m medseg_jax.models.cpu_kernels
build`) compiles it. When it is not built, or `MEDSEG_CPU_KERNELS=0`,
`lowering.choose` keeps XLA's lowering and says why in one log line.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

# Custom-call target -> symbol in native/cpu_kernels.cc.
TARGETS = {
  "medseg_batch_norm_forward": "MedsegBatchNormForward",
  "medseg_batch_norm_backward": "MedsegBatchNormBackward",
}
SOURCE = pathlib.Path(__file__).with_name("native") / "cpu_kernels.cc"
LIBRARY = SOURCE.with_name("libmedseg_cpu.so")
ENV_SWITCH = "MEDSEG_CPU_KERNELS"


def build(verbose: bool = True) -> pathlib.Path:
  """Compiles `native/cpu_kernels.cc` for this machine's CPU.

  `-march=native`: the library is built where it runs (it is not shipped).

  Returns:
    The path of the built library.

  Raises:
    subprocess.CalledProcessError: the compiler failed.
    FileNotFoundError: no compiler (`$CXX`, default `g++`).
  """
  command = [
    os.environ.get("CXX", "g++"),
    "-O3",
    "-march=native",
    # The ReLU mask is recomputed in the backward pass: the same `x * a + b`
    # must round the same way in both loops, so no contraction to FMA.
    "-ffp-contract=off",
    "-std=c++17",
    "-shared",
    "-fPIC",
    # Warnings from JAX's FFI headers.
    "-Wno-return-type",
    "-Wno-attributes",
    str(SOURCE),
    f"-I{jax.ffi.include_dir()}",
    "-o",
    str(LIBRARY),
  ]
  if verbose:
    print(" ".join(command))
  # Built beside the target, then renamed: a process loading the library
  # never sees a half-written file.
  partial = LIBRARY.with_suffix(".so.partial")
  command[command.index(str(LIBRARY))] = str(partial)
  subprocess.run(command, check=True, capture_output=not verbose)
  partial.replace(LIBRARY)
  return LIBRARY


@functools.cache
def available() -> bool:
  """Loads the library and registers its custom calls, once; False if not.

  Why it is unavailable goes to the log once (INFO when turned off or not
  built, WARNING when it fails to load).
  """
  if os.environ.get(ENV_SWITCH, "1") == "0":
    logging.info("Fused CPU batch norm off (%s=0).", ENV_SWITCH)
    return False
  if not LIBRARY.exists():
    logging.info(
      "Fused CPU batch norm not built (%s): XLA's batch norm is used; "
      "`python -m medseg_jax.models.cpu_kernels build` builds it.",
      LIBRARY,
    )
    return False
  try:
    library = ctypes.CDLL(str(LIBRARY))
    if library.medseg_cpu_kernels_probe() != 0:
      raise OSError("probe failed")
  except (OSError, AttributeError) as error:
    logging.warning("Fused CPU batch norm unavailable (%s): %s", LIBRARY, error)
    return False
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(
      target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu"
    )
  return True


def supports(x: jax.Array) -> bool:
  """Whether `batch_norm_train` takes `x` (float32, a channel axis)."""
  return x.dtype == jnp.float32 and x.ndim >= 2


def _as_rows(x: jax.Array) -> jax.Array:
  return x.reshape(-1, x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(
  x: jax.Array,
  scale: jax.Array,
  bias: jax.Array,
  epsilon: float,
  relu: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode batch norm over every axis but the last, by the library.

  The function of `batch_norm.batch_norm_train` (then `nn.relu` when
  `relu`): `y = (x - mean) * rsqrt(var + eps) * scale + bias` with the
  biased batch variance `max(E[x^2] - E[x]^2, 0)`.

  Args:
    x: `f32[..., C]`.
    scale: `f32[C]`.
    bias: `f32[C]`.
    epsilon: added to the variance.
    relu: whether the output goes through a ReLU.

  Returns:
    `(y, mean, var)`: `f32[..., C]` and `f32[C]` twice; all differentiable
    (the ReLU's gradient at 0 is 0, as `nn.relu`'s).
  """
  y, mean, var = _forward(x, scale, bias, epsilon, relu)
  return y, mean, var


def _rows_and_two_stats(target: str, x: jax.Array):
  """The custom call `target`, returning `f32[rows, C]` and two `f32[C]`."""
  channels = x.shape[-1]
  stat = jax.ShapeDtypeStruct((channels,), jnp.float32)
  rows = jax.ShapeDtypeStruct((x.size // channels, channels), jnp.float32)
  return jax.ffi.ffi_call(target, (rows, stat, stat), vmap_method="sequential")


def _forward(x, scale, bias, epsilon, relu):
  y, mean, var = _rows_and_two_stats("medseg_batch_norm_forward", x)(
    _as_rows(x), scale, bias, epsilon=np.float32(epsilon), relu=bool(relu)
  )
  return y.reshape(x.shape), mean, var


def _fwd(x, scale, bias, epsilon, relu):
  y, mean, var = _forward(x, scale, bias, epsilon, relu)
  return (y, mean, var), (x, scale, bias, mean, var)


def _bwd(epsilon, relu, residuals, cotangents):
  x, scale, bias, mean, var = residuals
  dy, dmean, dvar = cotangents
  dx, dscale, dbias = _rows_and_two_stats("medseg_batch_norm_backward", x)(
    _as_rows(x),
    scale,
    bias,
    mean,
    var,
    _as_rows(dy.astype(jnp.float32)),
    dmean.astype(jnp.float32),
    dvar.astype(jnp.float32),
    epsilon=np.float32(epsilon),
    relu=bool(relu),
  )
  return dx.reshape(x.shape), dscale, dbias


batch_norm_train.defvjp(_fwd, _bwd)


def main(argv: list[str]) -> None:
  """`build [--quiet]`: compiles the library and checks that it loads."""
  if not argv or argv[0] != "build" or set(argv[1:]) - {"--quiet"}:
    raise SystemExit(
      "usage: python -m medseg_jax.models.cpu_kernels build [--quiet]"
    )
  quiet = "--quiet" in argv
  try:
    build(verbose=not quiet)
  except (OSError, subprocess.CalledProcessError) as error:
    raise SystemExit(f"Building {LIBRARY} failed: {error}") from error
  if not available():
    raise SystemExit(f"Built {LIBRARY}, but it does not load (see the log).")
  if not quiet:
    print("built", LIBRARY)


if __name__ == "__main__":
  main(sys.argv[1:])
