"""Tests for medseg_jax.models.cpu_kernels (fused CPU batch norm + ReLU).

The comparisons need the library, which `make setup` (and so `make test`)
builds; without it they skip and only the fallback is tested.
"""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging

from medseg_jax import models
from medseg_jax.models import batch_norm
from medseg_jax.models import cpu_kernels
from medseg_jax.models import lowering

needs_library = pytest.mark.skipif(
  not cpu_kernels.available(),
  reason="fused CPU batch norm not built (make setup)",
)

SHAPES = [
  (3, 37, 41, 16),  # Rows not divisible by the number of tasks.
  (2, 5, 7, 3),
  (3, 1),  # One channel, three rows.
  (1, 1, 1, 2),  # One row: the variance is 0.
  (2, 6, 5, 4, 8),  # 3-D.
]


def _reference(x, scale, bias, relu):
  y, mean, var = batch_norm.batch_norm_train(x, scale, bias, 1e-5, "sum")
  return (nn.relu(y) if relu else y), mean, var


def _fused(x, scale, bias, relu):
  return cpu_kernels.batch_norm_train(x, scale, bias, 1e-5, relu)


def _operands(shape, seed=0):
  keys = jax.random.split(jax.random.key(seed), 7)
  c = shape[-1]
  x = 0.7 + 2.0 * jax.random.normal(keys[0], shape)
  scale = 1.0 + 0.5 * jax.random.normal(keys[1], (c,))
  bias = 0.3 * jax.random.normal(keys[2], (c,))
  # Cotangents for all three outputs: y, mean and var.
  wy = jax.random.normal(keys[3], shape)
  wm = jax.random.normal(keys[4], (c,))
  wv = jax.random.normal(keys[5], (c,))
  return x, scale, bias, (wy, wm, wv)


def _assert_close(actual, expected, rel=2e-5):
  for a, e in zip(actual, expected, strict=True):
    a, e = np.asarray(a), np.asarray(e)
    assert a.shape == e.shape and a.dtype == e.dtype
    np.testing.assert_allclose(a, e, atol=rel * max(np.abs(e).max(), 1e-6))


@needs_library
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_equal_xla(shape, relu):
  x, scale, bias, (wy, wm, wv) = _operands(shape)

  def loss(f):
    def value(x, scale, bias):
      y, mean, var = f(x, scale, bias, relu)
      # Nonlinear in y, so dy varies per element.
      return jnp.sum(jnp.tanh(y) * wy) + mean @ wm + var @ wv

    return jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2)))

  _assert_close(
    jax.jit(_fused, static_argnums=3)(x, scale, bias, relu),
    jax.jit(_reference, static_argnums=3)(x, scale, bias, relu),
  )
  (value, grads) = loss(_fused)(x, scale, bias)
  (ref_value, ref_grads) = loss(_reference)(x, scale, bias)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  _assert_close(grads, ref_grads)


@needs_library
def test_relu_at_exactly_zero_passes_no_gradient():
  # Per channel x = (-1, 0, 1): the middle element normalises to exactly 0,
  # where nn.relu's gradient is 0.
  x = jnp.array([[-1.0, -2.0], [0.0, 0.0], [1.0, 2.0]])
  scale, bias = jnp.ones(2), jnp.zeros(2)
  y, _, _ = _fused(x, scale, bias, True)
  assert float(y[1].max()) == 0.0 and float(y[1].min()) == 0.0
  grad = jax.grad(lambda x: _fused(x, scale, bias, True)[0].sum())(x)
  ref = jax.grad(lambda x: _reference(x, scale, bias, True)[0].sum())(x)
  np.testing.assert_allclose(grad, ref, atol=1e-6)


@needs_library
def test_batch_norm_module_uses_it_and_matches_the_xla_lowering():
  x = 1.0 + jax.random.normal(jax.random.key(0), (4, 9, 9, 6))
  module = batch_norm.BatchNorm(use_running_average=False, relu=True)
  variables = module.init(jax.random.key(1), x)

  def make_step():
    # A new function per lowering: JAX caches traces per function, and the
    # lowering is read at trace time.
    def run(x, params):
      y, updates = module.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        x,
        mutable=["batch_stats"],
      )
      return jnp.sum(jnp.sin(y)), updates

    return jax.jit(jax.value_and_grad(run, argnums=(0, 1), has_aux=True))

  # The tests' process has 8 CPU devices, where the choice is XLA's (see
  # test_choice_per_backend_and_override): force the fused kernel.
  with lowering.override(batch_norm_kernel="fused"):
    step = make_step()
    hlo = step.lower(x, variables["params"]).as_text()
    (value, updates), grads = step(x, variables["params"])
  assert "medseg_batch_norm_forward" in hlo
  assert "medseg_batch_norm_backward" in hlo
  with lowering.override(batch_norm_kernel="xla"):
    step = make_step()
    assert "medseg_batch_norm" not in (
      step.lower(x, variables["params"]).as_text()
    )
    (ref_value, ref_updates), ref_grads = step(x, variables["params"])
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  _assert_close(jax.tree.leaves(updates), jax.tree.leaves(ref_updates))
  _assert_close(jax.tree.leaves(grads), jax.tree.leaves(ref_grads))


def test_relu_flag_equals_a_separate_relu():
  # Whatever the lowering: BatchNorm(relu=True) is nn.relu(BatchNorm(...)),
  # with the same variables, in training and evaluation.
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
  for train in (True, False):
    fused = batch_norm.BatchNorm(use_running_average=not train, relu=True)
    plain = batch_norm.BatchNorm(use_running_average=not train)
    variables = plain.init(jax.random.key(1), x)
    assert jax.tree.structure(fused.init(jax.random.key(1), x)) == (
      jax.tree.structure(variables)
    )
    y_fused, _ = fused.apply(variables, x, mutable=["batch_stats"])
    y_plain, _ = plain.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y_fused, nn.relu(y_plain), atol=1e-6)


def test_unet_variables_do_not_change():
  # The ReLU moved into the norm modules; the variable tree must not.
  model = models.get_model(
    "unet", num_classes=2, spatial_dims=2, in_channels=1, features=(4, 8)
  )
  variables = model.init(
    jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False
  )
  names = {
    "/".join(str(getattr(k, "key", k)) for k in path)
    for path, _ in jax.tree_util.tree_leaves_with_path(variables)
  }
  assert "params/down_0/norm_0/scale" in names
  assert "batch_stats/down_0/norm_1/var" in names


def test_choice_per_backend_and_override():
  assert lowering.choose("gpu").batch_norm_kernel == "xla"
  assert lowering.choose("tpu").batch_norm_kernel == "xla"
  # XLA does not partition a custom call: with several devices (the tests'
  # 8 fake CPUs) batch norm stays XLA's unless forced.
  assert jax.device_count() > 1
  assert lowering.choose("cpu").batch_norm_kernel == "xla"
  with lowering.override(batch_norm_kernel="xla"):
    assert lowering.choose("cpu").batch_norm_kernel == "xla"
  with pytest.raises(ValueError, match="batch_norm_kernel.*fused"):
    with lowering.override(batch_norm_kernel="fast"):
      pass


def test_bfloat16_keeps_the_xla_path():
  x = jnp.ones((2, 3, 3, 2), jnp.bfloat16)
  assert not cpu_kernels.supports(x)
  assert cpu_kernels.supports(x.astype(jnp.float32))


@pytest.fixture(name="info_log")
def _info_log():
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  yield
  absl_logging.set_verbosity(verbosity)


def test_unavailable_when_turned_off_or_not_built(
  monkeypatch, caplog, tmp_path, info_log
):
  del info_log
  probe = cpu_kernels.available.__wrapped__  # Uncached.
  with caplog.at_level(logging.INFO):
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
    assert probe() is False
    monkeypatch.delenv(cpu_kernels.ENV_SWITCH)
    monkeypatch.setattr(cpu_kernels, "LIBRARY", tmp_path / "missing.so")
    assert probe() is False
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"not a shared object")
    monkeypatch.setattr(cpu_kernels, "LIBRARY", broken)
    assert probe() is False
  text = caplog.text
  assert "MEDSEG_CPU_KERNELS=0" in text
  assert "cpu_kernels build" in text and "missing.so" in text
  assert "broken.so" in text


def test_build_command_line_rejects_unknown_arguments():
  with pytest.raises(SystemExit, match="usage"):
    cpu_kernels.main(["compile"])
  with pytest.raises(SystemExit, match="usage"):
    cpu_kernels.main(["build", "--fast"])
