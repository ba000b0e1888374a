"""Tests for medseg_jax.models.lowering (the kernels and their choice)."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging

from medseg_jax.models import cpu_kernels
from medseg_jax.models import layers
from medseg_jax.models import lowering
from medseg_jax.models import onednn


@pytest.fixture(name="fresh_log")
def _fresh_log(monkeypatch):
  """Forgets which lowerings were logged, for tests that count the lines.

  Also lets absl's INFO lines through, whatever verbosity an earlier test
  (e.g. one running an entry point's console set-up) left behind.
  """
  monkeypatch.setattr(lowering, "_LOGGED", set())
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  yield
  absl_logging.set_verbosity(verbosity)


def test_choose_per_backend_and_mesh(fresh_log):
  del fresh_log
  cpu = lowering.choose("cpu")
  assert (cpu.conv3d, cpu.max_pool, cpu.batch_norm_sums) == (
    "depth_stacked",
    "index_routed",
    "dot",
  )
  for backend in ("gpu", "tpu"):
    other = lowering.choose(backend)
    assert (other.conv3d, other.max_pool, other.batch_norm_sums) == (
      "xla",
      "xla",
      "sum",
    )
  # A mesh that splits depth keeps XLA's 3-D convolution, even on the CPU.
  spatial = jax.sharding.AbstractMesh((1, 2), ("data", "spatial"))
  split = lowering.choose("cpu", mesh=spatial)
  assert (split.conv3d, split.max_pool) == ("xla", "index_routed")
  batch_only = jax.sharding.AbstractMesh((2, 1), ("data", "spatial"))
  assert lowering.choose("cpu", mesh=batch_only).conv3d == "depth_stacked"
  # The default backend is JAX's.
  assert lowering.choose().backend == jax.default_backend()


def test_override_forces_kernels_inside_the_block_only(fresh_log):
  del fresh_log
  with lowering.override(max_pool="xla", batch_norm_sums="sum"):
    forced = lowering.choose("cpu")
    assert (forced.conv3d, forced.max_pool, forced.batch_norm_sums) == (
      "depth_stacked",
      "xla",
      "sum",
    )
    with lowering.override(conv3d="xla"):
      assert lowering.choose("cpu").conv3d == "xla"
      assert lowering.choose("cpu").max_pool == "xla"  # Outer still holds.
    assert lowering.choose("cpu").conv3d == "depth_stacked"
  after = lowering.choose("cpu")
  assert (after.max_pool, after.batch_norm_sums) == ("index_routed", "dot")
  # The forced kernel is the one traced: no select_and_scatter in the
  # gradient of a pool under the override, one without it.
  x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)

  def grad_hlo():
    def pooled_sum(x):
      return layers.max_pool(x, 2).sum()

    return jax.jit(jax.grad(pooled_sum)).lower(x).as_text()

  assert "select_and_scatter" not in grad_hlo()
  with lowering.override(max_pool="xla"):
    assert "select_and_scatter" in grad_hlo()


def test_override_names_the_valid_choices():
  with pytest.raises(ValueError, match="conv3d.*max_pool.*batch_norm_sums"):
    with lowering.override(pool="xla"):
      pass
  with pytest.raises(ValueError, match="index_routed.*xla"):
    with lowering.override(max_pool="fast"):
      pass


def test_each_choice_is_logged_once(fresh_log, caplog):
  del fresh_log
  with caplog.at_level(logging.INFO):
    for _ in range(3):
      lowering.choose("cpu")
    lowering.choose("gpu")
    lowering.choose("gpu")
  lines = [r.getMessage() for r in caplog.records if "lowering" in r.message]
  one_device = jax.device_count() == 1
  cpu_library = "oneDNN" if one_device and onednn.available() else "XLA"
  cpu_norm = (
    "fused" if one_device and cpu_kernels.available() else "XLA (matvec sums)"
  )
  assert lines == [
    "CPU lowering: depth-stacked 3-D conv, index-routed max pool, "
    f"{cpu_norm} batch norm, {cpu_library} convolutions",
    "GPU lowering: XLA 3-D conv, XLA window max pool, XLA (reduce sums) "
    "batch norm, XLA convolutions",
  ]


def test_conv_impl_resolution():
  def resolve(impl, **kw):
    args = dict(spatial_dims=3, kernel_size=3, strides=1, padding="SAME")
    return lowering.conv_impl_for(impl, **(args | kw))

  assert resolve("depth_stacked") == "depth_stacked"
  assert resolve("xla") == "xla"
  assert resolve("auto") == lowering.choose().conv3d
  assert resolve("depth_stacked", spatial_dims=2) == "xla"
  assert resolve("depth_stacked", strides=2) == "xla"
  assert resolve("depth_stacked", kernel_size=2) == "xla"
  assert resolve("depth_stacked", kernel_size=1) == "xla"
  assert resolve("depth_stacked", padding="VALID") == "xla"
  # Explicit symmetric padding equal to 'SAME' (torchvision style) stacks.
  assert resolve("depth_stacked", padding=((1, 1),) * 3) == "depth_stacked"
  assert (
    resolve("depth_stacked", padding=[(4, 4)] * 3, dilation=4)
    == "depth_stacked"
  )
  assert resolve("depth_stacked", padding=((1, 1),) * 3, dilation=2) == "xla"
  assert resolve("depth_stacked", padding=((0, 2),) * 3) == "xla"
  with pytest.raises(ValueError, match="Unknown conv impl 'fast'"):
    resolve("fast")
  # The context mesh decides "auto" at trace time.
  devices = np.array(jax.devices()[:1]).reshape(1, 1)
  one = jax.sharding.Mesh(devices, ("data", "spatial"))
  with jax.set_mesh(one):
    assert resolve("auto") == lowering.choose().conv3d
  spatial = jax.sharding.AbstractMesh((1, 2), ("data", "spatial"))
  with jax.sharding.use_abstract_mesh(spatial):
    assert resolve("auto") == "xla"
    assert resolve("depth_stacked") == "depth_stacked"


@pytest.mark.parametrize("channels", [(3, 5), (6, 2)], ids=["stack", "sum"])
@pytest.mark.parametrize("kernel_size, dilation", [(3, 1), (3, 2), (5, 3)])
def test_depth_stacked_conv3d_equals_lax(channels, kernel_size, dilation):
  # Both branches (C_in <= C_out stacks the input, C_in > C_out sums the
  # output groups) against XLA's 3-D convolution; dilations that reach past
  # the depth of 7 included.
  c_in, c_out = channels
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 5, c_in))
  kernel = jax.random.normal(
    jax.random.key(1), (kernel_size,) * 3 + (c_in, c_out)
  )
  expected = jax.lax.conv_general_dilated(
    x,
    kernel,
    (1, 1, 1),
    "SAME",
    rhs_dilation=(dilation,) * 3,
    dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
  )
  np.testing.assert_allclose(
    lowering.depth_stacked_conv3d(x, kernel, dilation),
    expected,
    rtol=1e-5,
    atol=1e-4,
  )


def test_max_pool_impl_resolution():
  assert lowering.max_pool_impl_for("index_routed", window=2, strides=2) == (
    "index_routed"
  )
  assert lowering.max_pool_impl_for("auto", window=2, strides=2) == (
    lowering.choose().max_pool
  )
  # Overlapping windows always take XLA's window reduction.
  for impl in lowering.MAX_POOL_IMPLS:
    assert lowering.max_pool_impl_for(impl, window=3, strides=2) == "xla"
  with pytest.raises(ValueError, match="Unknown max pool impl"):
    lowering.max_pool_impl_for("fast", window=2, strides=2)


@pytest.mark.parametrize("shape", [(2, 9, 7, 3), (1, 6, 7, 5, 2)])
def test_index_routed_max_pool_with_window_three(shape):
  # Non-overlapping 3^d windows, ragged sizes, explicit padding and tied
  # maxima (small integers), against nn.max_pool's values and gradient.
  d = len(shape) - 2
  padding = ((1, 0),) + ((0, 1),) * (d - 1)
  x = jax.random.randint(jax.random.key(0), shape, 0, 3).astype(jnp.float32)

  def ref(x):
    return nn.max_pool(x, (3,) * d, strides=(3,) * d, padding=padding)

  def ours(x):
    return lowering.index_routed_max_pool(x, 3, padding)

  weight = jax.random.normal(jax.random.key(1), ref(x).shape)
  np.testing.assert_array_equal(ours(x), ref(x))
  np.testing.assert_array_equal(
    jax.grad(lambda x: jnp.sum(ours(x) * weight))(x),
    jax.grad(lambda x: jnp.sum(ref(x) * weight))(x),
  )


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4, 6)])
def test_channel_sums(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  expected = np.asarray(x, np.float64).reshape(-1, shape[-1]).sum(0)
  for impl in ("dot", "sum"):
    np.testing.assert_allclose(
      lowering.channel_sums(x, impl), expected, rtol=1e-6, atol=1e-6
    )
  assert lowering.batch_norm_impl_for("sum") == "sum"
  assert lowering.batch_norm_impl_for("auto") == (
    lowering.choose().batch_norm_sums
  )
  with pytest.raises(ValueError, match="Unknown batch norm impl"):
    lowering.batch_norm_impl_for("fast")
