"""Tests for medseg_jax.xla_cpu (the YNNPACK flag added at import)."""

import logging

from jax._src import xla_bridge

from medseg_jax import xla_cpu

FLAG = f"{xla_cpu.FLAG}={xla_cpu.VALUE}"


def test_adds_flag_before_backends_start(monkeypatch):
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 10))
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_cpu.enable_ynn(environ)
  assert environ["XLA_FLAGS"] == (
    f"--xla_force_host_platform_device_count=8 {FLAG}"
  )
  empty = {}
  assert xla_cpu.enable_ynn(empty)
  assert empty["XLA_FLAGS"] == FLAG


def test_respects_user_choice_and_opt_out(monkeypatch):
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 10))
  user = {"XLA_FLAGS": f"{xla_cpu.FLAG}=eltwise"}
  assert not xla_cpu.enable_ynn(user)
  assert user["XLA_FLAGS"] == f"{xla_cpu.FLAG}=eltwise"
  opted_out = {xla_cpu.ENV_SWITCH: "0"}
  assert not xla_cpu.enable_ynn(opted_out)
  assert "XLA_FLAGS" not in opted_out


def test_unknown_jaxlib_or_started_backend_leaves_flags(monkeypatch, caplog):
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 99))
  newer = {}
  assert not xla_cpu.enable_ynn(newer)
  assert "XLA_FLAGS" not in newer
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 10))
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
  started = {}
  with caplog.at_level(logging.WARNING):
    assert not xla_cpu.enable_ynn(started)
  assert "XLA_FLAGS" not in started
  assert "already started" in caplog.text
