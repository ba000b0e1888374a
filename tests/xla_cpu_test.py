"""Tests for medseg_jax.xla_cpu (the YNNPACK flag set by the entry points)."""

import json
import logging
import os
import pathlib
import subprocess
import sys

import pytest
from jax._src import xla_bridge

from medseg_jax import xla_cpu

FLAG = f"{xla_cpu.FLAG}={xla_cpu.VALUE}"
REPO = pathlib.Path(__file__).resolve().parents[1]


def test_adds_flag_before_backends_start(monkeypatch):
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 10))
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_cpu.configure_flags(environ)
  assert environ["XLA_FLAGS"] == (
    f"--xla_force_host_platform_device_count=8 {FLAG}"
  )
  empty = {}
  assert xla_cpu.configure_flags(empty)
  assert empty == {"XLA_FLAGS": FLAG}
  # A second call finds the flag and adds nothing.
  assert xla_cpu.configure_flags(empty)
  assert empty == {"XLA_FLAGS": FLAG}


def test_respects_user_choice_and_opt_out(monkeypatch):
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 10))
  user = {"XLA_FLAGS": f"{xla_cpu.FLAG}=eltwise"}
  assert not xla_cpu.configure_flags(user)
  assert user["XLA_FLAGS"] == f"{xla_cpu.FLAG}=eltwise"
  opted_out = {xla_cpu.ENV_SWITCH: "0"}
  assert not xla_cpu.configure_flags(opted_out)
  assert opted_out == {xla_cpu.ENV_SWITCH: "0"}


def test_unknown_jaxlib_or_started_backend_leaves_flags(monkeypatch, caplog):
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 99))
  newer = {}
  assert not xla_cpu.configure_flags(newer)
  assert "XLA_FLAGS" not in newer
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 10))
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
  started = {}
  with caplog.at_level(logging.WARNING):
    assert not xla_cpu.configure_flags(started)
  assert "XLA_FLAGS" not in started
  assert "already started" in caplog.text


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
  kept = [f for f in env.get("XLA_FLAGS", "").split() if xla_cpu.FLAG not in f]
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
