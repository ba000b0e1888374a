"""Convolutions in oneDNN, an optional CPU custom call.

On XLA:CPU the weight gradients of the 2-D U-Net's convolutions take 130
of the 215 ms its convolutions cost per train step (XLA transposes the
activation and the output gradient, then convolves over the batch; see
docs/cpu_performance.md). oneDNN's backward-weights primitive reads the
channels-last arrays as they are. `conv` is `lax.conv_general_dilated`
computed by oneDNN's forward, backward-data and backward-weights primitives
through XLA FFI custom calls (`native/onednn_conv.cc`).

It is an optional extra, because the oneDNN wheel on PyPI is large (it is
built with the SYCL CPU runtime: about 2 GB with its dependencies):

  make onednn     # pip install the pinned onednn wheels, build the library

`available()` says whether the library is built and loads; when it is not,
`lowering.choose` keeps XLA's weight gradients and logs why, once.
`MEDSEG_ONEDNN=0` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
import subprocess
import sys
import sysconfig
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

# Custom-call target -> symbol in native/onednn_conv.cc.
TARGETS = {
  "medseg_onednn_conv_forward": "MedsegOnednnConvForward",
  "medseg_onednn_conv_backward_data": "MedsegOnednnConvBackwardData",
  "medseg_onednn_conv_weight_grad": "MedsegOnednnConvWeightGrad",
}
SOURCE = pathlib.Path(__file__).with_name("native") / "onednn_conv.cc"
LIBRARY = SOURCE.with_name("libmedseg_onednn.so")
ENV_SWITCH = "MEDSEG_ONEDNN"

Padding = str | Sequence[tuple[int, int]]


def _prefix() -> pathlib.Path:
  """Where pip put the onednn wheels' `include/` and `lib/`."""
  return pathlib.Path(sysconfig.get_paths()["data"])


def build(verbose: bool = True) -> pathlib.Path:
  """Compiles `native/onednn_conv.cc` against the installed onednn wheels.

  Returns:
    The path of the built library.

  Raises:
    FileNotFoundError: the onednn headers or library are not installed
      (`pip install onednn onednn-devel`, or `make onednn`).
    subprocess.CalledProcessError: the compiler failed.
  """
  prefix = _prefix()
  header = prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp"
  lib_dir = prefix / "lib"
  if not header.exists() or not (lib_dir / "libdnnl.so").exists():
    raise FileNotFoundError(
      f"oneDNN not found under {prefix} ({header} and lib/libdnnl.so); "
      "install the pinned wheels with `make onednn`."
    )
  command = [
    os.environ.get("CXX", "g++"),
    "-O2",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-Wno-return-type",
    str(SOURCE),
    f"-I{jax.ffi.include_dir()}",
    f"-I{prefix / 'include'}",
    f"-L{lib_dir}",
    "-ldnnl",
    # RPATH (not RUNPATH): also searched for libdnnl's own dependencies
    # (tbb, SYCL and compiler runtimes), which sit beside it.
    "-Wl,--disable-new-dtags",
    f"-Wl,-rpath,{lib_dir}",
    "-o",
    str(LIBRARY),
  ]
  if verbose:
    print(" ".join(command))
  subprocess.run(command, check=True)
  return LIBRARY


@functools.cache
def available() -> bool:
  """Loads the library and registers the custom call, once; False if not.

  The reason it is unavailable is logged once at INFO (not built, turned
  off, no CPU engine).
  """
  if os.environ.get(ENV_SWITCH, "1") == "0":
    logging.info("oneDNN convolutions off (%s=0).", ENV_SWITCH)
    return False
  if not LIBRARY.exists():
    # Not asked for: the log file, not the console.
    logging.debug(
      "oneDNN convolutions not built (%s); `make onednn` builds them.",
      LIBRARY,
    )
    return False
  # The PyPI build runs its CPU engine on a SYCL CPU device, found through
  # the OpenCL ICD loader; point the loader at the wheel's CPU driver.
  driver = _prefix() / "lib" / "libintelocl.so"
  if "OCL_ICD_FILENAMES" not in os.environ and driver.exists():
    os.environ["OCL_ICD_FILENAMES"] = str(driver)
  try:
    library = ctypes.CDLL(str(LIBRARY))
  except OSError as error:
    logging.warning("oneDNN convolutions unavailable: %s", error)
    return False
  if library.medseg_onednn_probe() != 0:
    logging.warning("oneDNN convolutions unavailable: no oneDNN CPU engine.")
    return False
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(
      target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu"
    )
  return True


def _explicit_padding(
  x_shape: Sequence[int],
  kernel_shape: Sequence[int],
  strides: Sequence[int],
  padding: Padding,
  dilation: Sequence[int],
) -> list[tuple[int, int]]:
  if not isinstance(padding, str):
    return [tuple(int(v) for v in p) for p in padding]
  spatial = len(strides)
  window = [
    (k - 1) * d + 1
    for k, d in zip(kernel_shape[:spatial], dilation, strict=True)
  ]
  return list(jax.lax.padtype_to_pads(x_shape[1:-1], window, strides, padding))


def _call(target, a, b, result_shape, strides, padding, dilation):
  return jax.ffi.ffi_call(
    target,
    jax.ShapeDtypeStruct(tuple(result_shape), a.dtype),
    vmap_method="sequential",
  )(
    a,
    b,
    strides=np.asarray(strides, np.int64),
    padding_low=np.asarray([p[0] for p in padding], np.int64),
    padding_high=np.asarray([p[1] for p in padding], np.int64),
    dilation=np.asarray(dilation, np.int64),
  )


def _output_shape(x_shape, kernel_shape, strides, padding, dilation):
  spatial = []
  for i, (s, (lo, hi), d) in enumerate(
    zip(strides, padding, dilation, strict=True)
  ):
    window = (kernel_shape[i] - 1) * d + 1
    spatial.append((x_shape[1 + i] + lo + hi - window) // s + 1)
  return (x_shape[0], *spatial, kernel_shape[-1])


def conv_forward(x, kernel, strides, padding, dilation) -> jax.Array:
  """The convolution `f[B, *S, C_in] x f[*K, C_in, C_out]`, by oneDNN."""
  shape = _output_shape(x.shape, kernel.shape, strides, padding, dilation)
  return _call(
    "medseg_onednn_conv_forward",
    x,
    kernel,
    shape,
    strides,
    padding,
    dilation,
  )


def conv_input_grad(dy, kernel, x_shape, strides, padding, dilation):
  """d(loss)/d(x) of a channels-last convolution, by oneDNN."""
  return _call(
    "medseg_onednn_conv_backward_data",
    dy,
    kernel,
    x_shape,
    strides,
    padding,
    dilation,
  )


def conv_weight_grad(
  x: jax.Array,
  dy: jax.Array,
  kernel_shape: Sequence[int],
  strides: Sequence[int],
  padding: Sequence[tuple[int, int]],
  dilation: Sequence[int],
) -> jax.Array:
  """d(loss)/d(kernel) of a channels-last convolution, by oneDNN.

  Args:
    x: the convolution's input, `f[B, *S, C_in]` (2 or 3 spatial axes).
    dy: the gradient of its output, `f[B, *S', C_out]`, same dtype.
    kernel_shape: `(*K, C_in, C_out)`.
    strides, padding, dilation: as given to `lax.conv_general_dilated`
      (`padding` explicit `(low, high)` pairs, dilation 1 = dense).

  Returns:
    `f[*K, C_in, C_out]` in `x.dtype` (float32 or bfloat16).
  """
  return _call(
    "medseg_onednn_conv_weight_grad",
    x,
    dy,
    kernel_shape,
    strides,
    padding,
    dilation,
  )


def _dimension_numbers(spatial: int):
  spec = "NDHWC" if spatial == 3 else "NHWC"
  return (spec, ("DHW" if spatial == 3 else "HW") + "IO", spec)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(
  x: jax.Array,
  kernel: jax.Array,
  strides: tuple[int, ...],
  padding: tuple[tuple[int, int], ...],
  dilation: tuple[int, ...],
) -> jax.Array:
  """`lax.conv_general_dilated` (channels last), all of it in oneDNN.

  The forward pass, the input gradient and the weight gradient are oneDNN
  primitives (`conv_forward`, `conv_input_grad`, `conv_weight_grad`).

  Args:
    x: `f[B, *S, C_in]`, 2 or 3 spatial axes, float32 or bfloat16.
    kernel: `f[*K, C_in, C_out]`, the same dtype.
    strides: one per spatial axis.
    padding: explicit `(low, high)` per spatial axis (`explicit_padding`
      turns "SAME"/"VALID" into these).
    dilation: kernel dilation per spatial axis.

  Returns:
    `f[B, *S', C_out]`; it and its gradients equal XLA's within float
    rounding (tested).
  """
  return conv_forward(x, kernel, strides, padding, dilation)


def _conv_fwd(x, kernel, strides, padding, dilation):
  return conv(x, kernel, strides, padding, dilation), (x, kernel)


def _conv_bwd(strides, padding, dilation, residuals, dy):
  x, kernel = residuals
  dy = dy.astype(x.dtype)
  dx = conv_input_grad(dy, kernel, x.shape, strides, padding, dilation)
  dk = conv_weight_grad(x, dy, kernel.shape, strides, padding, dilation)
  return dx, dk


conv.defvjp(_conv_fwd, _conv_bwd)


def explicit_padding(
  x_shape: Sequence[int],
  kernel_shape: Sequence[int],
  strides: Sequence[int],
  padding: Padding,
  dilation: Sequence[int],
) -> tuple[tuple[int, int], ...]:
  """`padding` as `(low, high)` pairs that oneDNN accepts.

  "SAME"/"VALID" resolve as XLA resolves them. oneDNN wants each high
  padding to be exactly what the last window reaches past the input,
  `(out - 1) * stride + window - size - low`; a larger one (e.g. padding 3
  for a 7-wide kernel at stride 2) never reaches the output, so it is
  trimmed to that value, which computes the same convolution. The result
  can be negative where the last input rows are never read (see
  `supports`).
  """
  pads = _explicit_padding(x_shape, kernel_shape, strides, padding, dilation)
  spatial = len(strides)
  trimmed = []
  for i in range(spatial):
    lo, hi = pads[i]
    window = (kernel_shape[i] - 1) * dilation[i] + 1
    out = (x_shape[1 + i] + lo + hi - window) // strides[i] + 1
    trimmed.append((lo, (out - 1) * strides[i] + window - x_shape[1 + i] - lo))
  return tuple(trimmed)


def supports(
  x: jax.Array,
  kernel: jax.Array,
  padding: Sequence[tuple[int, int]] = (),
) -> bool:
  """Whether `conv` takes these operands (dtype, rank and padding).

  `padding` is `explicit_padding`'s; a negative high padding (input rows
  that no window reads, whose input gradient must be zero) is left to XLA.
  So are 3-D convolutions with kernels wider than 3: oneDNN 2026.1's
  backward-weights primitive returns garbage for some of them (7^3 at
  stride 2 in float32, at stride 1 in bfloat16), which the tests catch.
  (The models' wide 3-D convolutions are depth-stacked 2-D ones anyway.)
  """
  wide_3d = kernel.ndim == 5 and max(kernel.shape[:3]) > 3
  return (
    x.dtype == kernel.dtype
    and x.dtype in (jnp.float32, jnp.bfloat16)
    and kernel.ndim in (4, 5)
    and all(lo >= 0 and hi >= 0 for lo, hi in padding)
    and not wide_3d
  )


if __name__ == "__main__":
  if sys.argv[1:] == ["build"]:
    build()
    print("built", LIBRARY, "available:", available())
  else:
    raise SystemExit("usage: python -m medseg_jax.models.onednn build")
