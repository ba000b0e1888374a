"""XLA flags for faster CPU kernels, set by the entry points.

XLA:CPU can hand matrix multiplications and convolutions to YNNPACK
(`--xla_cpu_experimental_ynn_fusion_type=dot`). On the 2-core CPU this
project is developed on it makes the 3-D U-Net train step 1.5x faster and
3-D sliding-window inference 1.45x faster (`benchmarks/models.py`,
`benchmarks/sliding_window.py`; figures in the README).

XLA reads `XLA_FLAGS` once, when the first backend starts, so
`configure_flags` must run before any JAX computation. Importing
`medseg_jax` changes nothing: the command-line entry points (`main`,
`evaluate`, `predict`, `benchmark`) and the scripts in `benchmarks/` call
it first thing in `main`, and a notebook or a program of your own may too:

  from medseg_jax import xla_cpu
  xla_cpu.configure_flags()  # Before the first JAX computation.
  import jax

It only touches the CPU backend (GPU and TPU runs are unaffected) and only
for the jaxlib minor versions it was measured on, since XLA aborts on flags
it does not know. Opt out with `MEDSEG_XLA_CPU_YNN=0`; a flag of the same
name already in `XLA_FLAGS` is left as the user set it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "dot"
# jaxlib versions (major, minor) whose XLA accepts the flag.
KNOWN_GOOD = ((0, 10),)
ENV_SWITCH = "MEDSEG_XLA_CPU_YNN"


def _jaxlib_version() -> tuple[int, ...]:
  import jaxlib  # noqa: PLC0415

  return tuple(int(p) for p in jaxlib.__version__.split(".")[:2])


def configure_flags(environ: MutableMapping[str, str] | None = None) -> bool:
  """Adds the YNNPACK flag to `XLA_FLAGS` if allowed; True if it is set.

  Leaves `XLA_FLAGS` alone, and returns False, when the user opted out
  (`MEDSEG_XLA_CPU_YNN=0`), when jaxlib is not a version in `KNOWN_GOOD`,
  or when the JAX backends have already started (then it also logs a
  warning, since the flag could no longer take effect). A `FLAG` already
  in `XLA_FLAGS` is kept as it is; the result says whether it is `VALUE`.

  Args:
    environ: the environment to edit (default `os.environ`).

  Returns:
    Whether `XLA_FLAGS` now asks for YNNPACK.
  """
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  if FLAG in flags:
    return f"{FLAG}={VALUE}" in flags
  if environ.get(ENV_SWITCH, "1") == "0":
    return False
  if _jaxlib_version() not in KNOWN_GOOD:
    return False
  from jax._src import xla_bridge  # noqa: PLC0415

  if xla_bridge.backends_are_initialized():
    logging.warning(
      "JAX backends already started; %s=%s has no effect. Call "
      "medseg_jax.xla_cpu.configure_flags() before running any JAX "
      "computation to get faster CPU kernels.",
      FLAG,
      VALUE,
    )
    return False
  environ["XLA_FLAGS"] = f"{flags} {FLAG}={VALUE}".strip()
  return True
