"""Test-wide settings: 8 fake CPU devices, fast compiles, quiet TensorFlow,
shared data paths.

Devices: the test process has ``NUM_DEVICES`` (8) CPU devices, set here once
before JAX starts, so multi-device tests run in-process instead of in a
pytest subprocess each. ``sharding.make_mesh()`` (and so the trainer's mesh)
still spans one device unless a test asks for more, because most tests mean
a plain single-device run and the batch of a tiny config need not divide 8:

  def test_eight_way(eight_devices):     # the 8 devices; the trainer's
    ...                                  # mesh spans all of them too
  def test_four_way(mesh_devices):
    mesh_devices(4)                      # the trainer's mesh spans 4

The device count is set through ``jax_num_cpu_devices`` rather than
``XLA_FLAGS``, so that the subprocesses some tests start (``python -m
medseg_jax.main`` ...) keep the platform's default of one CPU device unless
they ask for more themselves.
"""

import os
import pathlib
from collections.abc import Callable

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

import jax  # noqa: E402
import pytest  # noqa: E402

from medseg_jax import xla_cpu  # noqa: E402

xla_cpu.configure_flags()  # What the entry points run with.

NUM_DEVICES = 8
# Only counts for the CPU backend, and only before it starts (conftest.py is
# imported before any test module).
jax.config.update("jax_num_cpu_devices", NUM_DEVICES)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


# How many devices `sharding.make_mesh()` spans when given none; reset to
# one after every test (see `mesh_devices`).
_default_mesh_size = [1]


@pytest.fixture(scope="session", autouse=True)
def _default_mesh_on_one_device():
  """Makes ``sharding.make_mesh()`` span ``_default_mesh_size`` devices.

  Session-scoped so that module-scoped fixtures that train a run see it too.
  """
  from medseg_jax import sharding  # pylint: disable=g-import-not-at-top

  make_mesh = sharding.make_mesh

  def default_devices_mesh(devices=None, axes=None):
    if devices is None:
      devices = jax.devices()[: _default_mesh_size[0]]
    return make_mesh(devices, axes)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sharding, "make_mesh", default_devices_mesh)
    yield


@pytest.fixture
def mesh_devices() -> Callable[[int], list[jax.Device]]:
  """``mesh_devices(n)`` makes ``sharding.make_mesh()`` (the trainer's mesh)
  span the first ``n`` devices for the rest of the test, and returns them.

  A mesh built from an explicit device list is not affected.
  """

  def use(n: int) -> list[jax.Device]:
    devices = jax.devices()
    if jax.default_backend() != "cpu" or len(devices) < n:
      pytest.skip(f"needs {n} CPU devices; this backend has {len(devices)}")
    _default_mesh_size[0] = n
    return devices[:n]

  yield use
  _default_mesh_size[0] = 1


@pytest.fixture
def eight_devices(mesh_devices) -> list[jax.Device]:
  """The 8 fake CPU devices, which the default mesh then spans too."""
  return mesh_devices(NUM_DEVICES)


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
