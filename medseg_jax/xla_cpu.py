"""XLA flags for faster CPU kernels, set by the entry points.

XLA:CPU can run convolutions three ways: its own Eigen kernels, a YNNPACK
fusion, or (jaxlib 0.11 and newer) oneDNN custom calls. Which is fastest
depends on the jaxlib version and on whether the network is 2-D or 3-D, so
`FLAGS` holds, per jaxlib minor version and number of spatial dimensions,
the flags that won in the whole train step on the 2-core CPU this project
is developed on (`benchmarks/train_throughput.py`; the figures are in
docs/cpu_performance.md):

* jaxlib 0.12, 2-D: oneDNN custom calls for the forward convolution and
  both gradients, with YNNPACK's convolution fusion off (the two flags go
  together: while YNNPACK claims a convolution, oneDNN never sees it).
* jaxlib 0.12, 3-D: YNNPACK for matrix products and convolutions (`dot`);
  our depth-stacked 3-D convolution is a 2-D convolution, which YNNPACK
  then runs.

XLA reads `XLA_FLAGS` once, when the first backend starts, so
`configure_flags` must run before any JAX computation. Importing
`medseg_jax` changes nothing: the command-line entry points (`main`,
`evaluate`, `predict`, `benchmark`) and the scripts in `benchmarks/` call
it first thing in `main`, and a notebook or a program of your own may too:

  from medseg_jax import xla_cpu
  xla_cpu.configure_flags(spatial_dims=2)  # Before any JAX computation.
  import jax

It only touches the CPU backend (GPU and TPU runs are unaffected) and only
for the jaxlib versions it was measured on, since XLA aborts on flags it
does not know. Opt out with `MEDSEG_XLA_CPU_FLAGS=0`; if any flag of the
chosen set is already in `XLA_FLAGS`, the set is left as the user wrote it.

`configure_flags` also calls `tune_allocator`: XLA:CPU allocates each
step's temporaries as one block (171 MB for the 2-D U-Net step) and frees
it after the step. glibc serves a block that large, requested from one of
XLA's threads, with a fresh `mmap`, so every step faults in and zeroes
171 MB again: 43,000 page faults and about 90 ms of kernel time per step
on the 2-core CPU. With one malloc arena, no `mmap` and no trimming, the
block stays in the heap and is reused, and the step is 10-20 % faster
(docs/cpu_performance.md).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import MutableMapping

_YNN = "--xla_cpu_experimental_ynn_fusion_type"
_ONEDNN = "--xla_cpu_experimental_onednn_custom_call"
# (jaxlib major, minor) -> spatial dims -> flags, each set measured in the
# train step (module docstring).
FLAGS: dict[tuple[int, int], dict[int, tuple[str, ...]]] = {
  (0, 12): {
    # 2-D: XLA's oneDNN convolution custom calls and no YNNPACK fusion at
    # all (an empty list): YNNPACK's element-wise fusions cost 13-19 % of
    # the step (benchmarks/xla_cpu_options.py).
    2: (f"{_ONEDNN}=true", f"{_YNN}="),
    3: (f"{_YNN}=dot",),
  },
}
ENV_SWITCH = "MEDSEG_XLA_CPU_FLAGS"

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# (parameter, value): one arena (threads' arenas cannot grow past 64 MB
# and fall back to mmap), no mmap, and no returning the heap's top to the
# system below 2 GB free.
ALLOCATOR = (
  (_M_ARENA_MAX, 1),
  (_M_MMAP_MAX, 0),
  (_M_TRIM_THRESHOLD, 2**31 - 1),
)


def tune_allocator() -> bool:
  """Keeps large freed blocks in glibc's heap (see the module docstring).

  Must run before JAX starts its CPU threads (an existing thread keeps the
  arena it has). Process-wide and only on Linux with glibc; elsewhere it
  does nothing.

  Returns:
    Whether every setting was accepted.
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):  # Not glibc (e.g. musl).
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return all(mallopt(param, value) == 1 for param, value in ALLOCATOR)


def _jaxlib_version() -> tuple[int, ...]:
  import jaxlib  # noqa: PLC0415

  return tuple(int(p) for p in jaxlib.__version__.split(".")[:2])


def flags_for(spatial_dims: int = 2) -> tuple[str, ...]:
  """The measured flags for the installed jaxlib; () where none were."""
  return FLAGS.get(_jaxlib_version(), {}).get(spatial_dims, ())


def configure_flags(
  environ: MutableMapping[str, str] | None = None, spatial_dims: int = 2
) -> bool:
  """Adds the measured CPU flags to `XLA_FLAGS` if allowed; True if set.

  Leaves `XLA_FLAGS` alone, and returns False, when the user opted out
  (`MEDSEG_XLA_CPU_FLAGS=0`), when no flags were measured for this jaxlib,
  or when the JAX backends have already started (then it also logs a
  warning, since the flags could no longer take effect). If a flag of the
  set is already in `XLA_FLAGS` (by name), nothing is added and the result
  says whether the whole set is there as chosen. Whenever the result is
  True for this process's environment, `tune_allocator` runs too.

  Args:
    environ: the environment to edit (default `os.environ`).
    spatial_dims: 2 or 3, the dimensionality of the run's network.

  Returns:
    Whether `XLA_FLAGS` now holds the chosen flags.
  """
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  chosen = flags_for(spatial_dims)
  present = flags.split()
  names = {flag.split("=", 1)[0] for flag in chosen}
  if any(flag.split("=", 1)[0] in names for flag in present):
    # Set by the user, or inherited from a parent that chose them.
    as_chosen = bool(chosen) and all(flag in present for flag in chosen)
    if as_chosen:
      _tune_allocator_before_start(environ)
    return as_chosen
  if environ.get(ENV_SWITCH, "1") == "0" or not chosen:
    return False
  from jax._src import xla_bridge  # noqa: PLC0415

  if xla_bridge.backends_are_initialized():
    logging.warning(
      "JAX backends already started; %s has no effect. Call "
      "medseg_jax.xla_cpu.configure_flags() before running any JAX "
      "computation to get faster CPU kernels.",
      " ".join(chosen),
    )
    return False
  environ["XLA_FLAGS"] = " ".join([flags, *chosen]).strip()
  _tune_allocator_before_start(environ)
  return True


def _tune_allocator_before_start(environ: MutableMapping[str, str]) -> None:
  # Only for this process (not an environment being prepared for another)
  # and only while XLA's threads do not exist yet.
  from jax._src import xla_bridge  # noqa: PLC0415

  if environ is os.environ and not xla_bridge.backends_are_initialized():
    tune_allocator()


def configure_for(config) -> bool:
  """`configure_flags` for a run's config: its patch size gives 2-D or 3-D.

  Args:
    config: an `ml_collections.ConfigDict` with `data.patch_size`, or
      None (then 2-D).

  Returns:
    What `configure_flags` returns.
  """
  patch = None
  if config is not None and "data" in config:
    patch = config.data.get("patch_size")
  return configure_flags(spatial_dims=len(patch) if patch else 2)
