"""Faster XLA:CPU kernels, switched on when medseg_jax is imported.

XLA:CPU can hand matrix multiplications and convolutions to YNNPACK
(`--xla_cpu_experimental_ynn_fusion_type=dot`). On the 2-core CPU this
project is developed on it makes the 3-D U-Net train step 1.5x faster and
3-D sliding-window inference 1.45x faster (`benchmarks/models.py`,
`benchmarks/sliding_window.py`; figures in the README). XLA reads
`XLA_FLAGS` once, when the first backend starts, so the flag is added to
the environment at import time, before any computation.

It only touches the CPU backend (GPU and TPU runs are unaffected) and only
for the jaxlib minor versions it was measured on, since XLA aborts on flags
it does not know. Opt out with `MEDSEG_XLA_CPU_YNN=0`; a flag of the same
name already in `XLA_FLAGS` is left as the user set it.
"""

from __future__ import annotations

import logging
import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "dot"
# jaxlib versions (major, minor) whose XLA accepts the flag.
KNOWN_GOOD = ((0, 10),)
ENV_SWITCH = "MEDSEG_XLA_CPU_YNN"


def _jaxlib_version() -> tuple[int, ...]:
  import jaxlib  # noqa: PLC0415

  return tuple(int(p) for p in jaxlib.__version__.split(".")[:2])


def enable_ynn(environ: dict[str, str] | None = None) -> bool:
  """Adds the YNNPACK flag to `XLA_FLAGS` if allowed; True if it is set.

  Args:
    environ: the environment to edit (default `os.environ`).
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
      "JAX backends already started; %s=%s has no effect. Import medseg_jax "
      "before running any JAX computation to get faster CPU kernels.",
      FLAG,
      VALUE,
    )
    return False
  environ["XLA_FLAGS"] = f"{flags} {FLAG}={VALUE}".strip()
  return True
