"""Test-wide settings: fast compiles, quiet TensorFlow, shared data paths."""

import os
import pathlib

# Compilation dominates tiny-model tests; skip XLA's expensive passes. Must
# be set before JAX initialises its backend.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_FAST_XLA = (
  "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " " + _FAST_XLA
  ).strip()

import pytest  # noqa: E402

from medseg_jax import xla_cpu  # noqa: E402

xla_cpu.configure_flags()  # What the entry points run with.

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_2d_dir(tmp_path_factory):
  """The 2-D synthetic phantoms, built once per test session."""
  from medseg_jax.data import registry  # pylint: disable=g-import-not-at-top

  path = tmp_path_factory.mktemp("tfds")
  registry.prepare("synthetic_phantoms/2d", str(path))
  return path
