"""Tests for medseg_jax.xla_cpu (the CPU flags set by the entry points)."""

import json
import logging
import os
import pathlib
import subprocess
import sys

import pytest
from jax._src import xla_bridge

from medseg_jax import xla_cpu

REPO = pathlib.Path(__file__).resolve().parents[1]
ONEDNN = xla_cpu.FLAGS[(0, 12)][2]
YNN_DOT = xla_cpu.FLAGS[(0, 12)][3]


@pytest.fixture
def jaxlib_0_12(monkeypatch):
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 12))


def test_table_names_the_measured_choices():
  # The figures in docs/cpu_performance.md: oneDNN convolutions and no
  # YNNPACK fusions for 2-D, YNNPACK dots for 3-D (on jaxlib 0.12).
  assert "--xla_cpu_experimental_onednn_custom_call=true" in ONEDNN
  # An empty list: no YNNPACK fusion (its element-wise fusions were slower).
  assert "--xla_cpu_experimental_ynn_fusion_type=" in ONEDNN
  assert YNN_DOT == ("--xla_cpu_experimental_ynn_fusion_type=dot",)


def test_adds_flags_per_spatial_dims(jaxlib_0_12):
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_cpu.configure_flags(environ, spatial_dims=2)
  assert environ["XLA_FLAGS"].split() == [
    "--xla_force_host_platform_device_count=8",
    *ONEDNN,
  ]
  empty = {}
  assert xla_cpu.configure_flags(empty, spatial_dims=3)
  assert empty == {"XLA_FLAGS": " ".join(YNN_DOT)}
  # A second call finds the flags and adds nothing.
  assert xla_cpu.configure_flags(empty, spatial_dims=3)
  assert empty == {"XLA_FLAGS": " ".join(YNN_DOT)}


def test_respects_user_choice_and_opt_out(jaxlib_0_12):
  # One flag of the set, set by the user to another value: nothing added.
  user = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=eltwise"}
  assert not xla_cpu.configure_flags(user, spatial_dims=2)
  assert user["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=eltwise"
  opted_out = {xla_cpu.ENV_SWITCH: "0"}
  assert not xla_cpu.configure_flags(opted_out)
  assert opted_out == {xla_cpu.ENV_SWITCH: "0"}


def test_unknown_jaxlib_or_started_backend_leaves_flags(monkeypatch, caplog):
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 99))
  newer = {}
  assert not xla_cpu.configure_flags(newer)
  assert "XLA_FLAGS" not in newer
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 12))
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
  started = {}
  with caplog.at_level(logging.WARNING):
    assert not xla_cpu.configure_flags(started)
  assert "XLA_FLAGS" not in started
  assert "already started" in caplog.text


def test_onednn_flags_route_convolutions_to_onednn():
  # On the installed jaxlib, in a fresh process: the 2-D set turns the
  # forward convolution and both gradients into oneDNN custom calls.
  if xla_cpu.flags_for(2) != ONEDNN:
    pytest.skip(f"no oneDNN flags for jaxlib {xla_cpu._jaxlib_version()}")
  env = dict(os.environ, XLA_FLAGS=" ".join(ONEDNN))
  result = subprocess.run(
    [sys.executable, "-c", _CONV_HLO],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  assert result.stdout.strip().splitlines()[-1] == "3"


_CONV_HLO = """
import jax, jax.numpy as jnp
def loss(x, k):
  y = jax.lax.conv_general_dilated(
    x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return (y * y).sum()
x, k = jnp.ones((2, 16, 16, 4)), jnp.ones((3, 3, 4, 8))
f = jax.jit(lambda x, k: (loss(x, k), jax.grad(loss, (0, 1))(x, k)))
hlo = f.lower(x, k).compile().as_text()
print(hlo.count('custom_call_target="__onednn$convolution"'))
"""


# Imports the package modules one after another in a fresh interpreter and
# prints os.environ before and after each. The baseline is taken after
# `import jax`, because jax's own import sets TF_CPP_MIN_LOG_LEVEL and
# TPU_SKIP_MDS_QUERY (jax 0.10.2): what is tested is that our modules add
# nothing to that.
_IMPORTS = """
import importlib, json, os, sys
import jax
snapshots = [dict(os.environ)]
for name in sys.argv[1:]:
  importlib.import_module(name)
  snapshots.append(dict(os.environ))
print(json.dumps(snapshots))
"""


@pytest.mark.slow
def test_importing_the_package_leaves_the_environment_alone():
  env = dict(os.environ)
  # An environment in which the flag would be added if anything called
  # configure_flags (the test session itself may have added it already).
  ours = {f.split("=")[0] for dims in (2, 3) for f in xla_cpu.flags_for(dims)}
  kept = [
    f for f in env.get("XLA_FLAGS", "").split() if f.split("=")[0] not in ours
  ]
  env["XLA_FLAGS"] = " ".join(kept)
  env.pop(xla_cpu.ENV_SWITCH, None)
  # As in a fresh shell: the test session's own imports set these.
  for name in ("TF_CPP_MIN_LOG_LEVEL", "TPU_SKIP_MDS_QUERY"):
    env.pop(name, None)
  env["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *filter(None, [env.get("PYTHONPATH")])]
  )
  modules = ["medseg_jax.metrics", "medseg_jax", "medseg_jax.models"]
  result = subprocess.run(
    [sys.executable, "-c", _IMPORTS, *modules],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  )
  before, *after = json.loads(result.stdout.strip().splitlines()[-1])
  assert before["XLA_FLAGS"] == env["XLA_FLAGS"]
  for name, snapshot in zip(modules, after, strict=True):
    assert snapshot == before, f"import {name} changed os.environ"


_REUSE = """
import ctypes, resource, sys, threading
from medseg_jax import xla_cpu
if sys.argv[1] == "tuned":
  assert xla_cpu.tune_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 128 << 20  # Like XLA's per-step temporaries, from a worker thread.
faults = []
def work():
  for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(faults)
"""


@pytest.mark.skipif(
  not sys.platform.startswith("linux"), reason="glibc's allocator only"
)
def test_tuned_allocator_reuses_a_large_block_instead_of_refaulting_it():
  pages = (128 << 20) // os.sysconf("SC_PAGE_SIZE")

  def faults(mode):
    result = subprocess.run(
      [sys.executable, "-c", _REUSE, mode],
      cwd=REPO,
      env={**os.environ, "PYTHONPATH": str(REPO)},
      capture_output=True,
      text=True,
      check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])

  default, tuned = faults("default"), faults("tuned")
  # glibc's default: a fresh mmap per block, every page faulted each time.
  assert all(n > pages // 2 for n in default), default
  # Tuned: the first block is faulted in once and then reused.
  assert tuned[0] > pages // 2 and max(tuned[1:]) < pages // 20, tuned


def test_allocator_is_tuned_only_for_this_process_before_jax_starts(
  monkeypatch, jaxlib_0_12
):
  calls = []
  monkeypatch.setattr(xla_cpu, "tune_allocator", lambda: calls.append(1))
  assert xla_cpu.configure_flags({}, spatial_dims=2)
  assert not calls  # Another environment (e.g. a child's): not this process.
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv(xla_cpu.ENV_SWITCH, raising=False)
  assert xla_cpu.configure_flags(spatial_dims=2)
  assert calls == [1]
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
  assert xla_cpu.configure_flags(spatial_dims=2)  # Flags already there.
  assert calls == [1]  # Too late: XLA's threads exist.
