"""`batch_norm.BatchNorm` against `flax.linen.BatchNorm`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax.models import batch_norm


def _flax_and_ours(use_running_average, impl="auto", dtype=None):
  ref = nn.BatchNorm(
    use_running_average=use_running_average,
    momentum=0.9,
    epsilon=1e-5,
    dtype=dtype,
  )
  ours = batch_norm.BatchNorm(
    use_running_average=use_running_average,
    momentum=0.9,
    epsilon=1e-5,
    dtype=dtype,
    impl=impl,
  )
  return ref, ours


def _random_variables(key, features):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return {
    "params": {
      "scale": 1 + 0.3 * jax.random.normal(k1, (features,)),
      "bias": 0.2 * jax.random.normal(k2, (features,)),
    },
    "batch_stats": {
      "mean": 0.5 * jax.random.normal(k3, (features,)),
      "var": jnp.exp(0.3 * jax.random.normal(k4, (features,))),
    },
  }


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["dot", "sum"])
@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (2, 4, 3, 5, 8)])
def test_train_mode_matches_flax(impl, shape):
  x = 2.0 + 3.0 * jax.random.normal(jax.random.key(0), shape)
  ref, ours = _flax_and_ours(False, impl)
  variables = ref.init(jax.random.key(1), x)
  ours_vars = ours.init(jax.random.key(1), x)
  assert jax.tree.structure(variables) == jax.tree.structure(ours_vars)
  variables = _random_variables(jax.random.key(2), shape[-1])
  weight = jax.random.normal(jax.random.key(3), shape)

  def loss(module, params, x):
    y, updates = module.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      mutable=["batch_stats"],
    )
    # A nonlinear loss, so the gradient is not a constant.
    return jnp.sum(jnp.tanh(y) * weight), (y, updates)

  (l_ref, (y_ref, up_ref)), g_ref = jax.value_and_grad(
    lambda p, x: loss(ref, p, x), argnums=(0, 1), has_aux=True
  )(variables["params"], x)
  (l_ours, (y_ours, up_ours)), g_ours = jax.value_and_grad(
    lambda p, x: loss(ours, p, x), argnums=(0, 1), has_aux=True
  )(variables["params"], x)
  np.testing.assert_allclose(y_ours, y_ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(l_ours, l_ref, rtol=1e-5)
  for a, b in zip(
    jax.tree.leaves(up_ours), jax.tree.leaves(up_ref), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
    scale = float(jnp.abs(b).max())
    np.testing.assert_allclose(a, b, atol=2e-5 * scale)


@pytest.mark.slow
def test_gradient_through_returned_statistics():
  # Not used by the models (they stop the gradient into the running
  # averages), but the custom VJP must still be right for them.
  x = jax.random.normal(jax.random.key(0), (3, 4, 5, 2))
  scale, bias = jnp.array([1.5, 0.5]), jnp.array([0.1, -0.2])

  def reference(x):
    mean = x.mean((0, 1, 2))
    var = (x * x).mean((0, 1, 2)) - mean**2
    y = (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias
    return jnp.sum(jnp.sin(y)) + jnp.sum(mean**2) + jnp.sum(jnp.sqrt(var))

  def ours(x):
    y, mean, var = batch_norm.batch_norm_train(x, scale, bias, 1e-5, "dot")
    return jnp.sum(jnp.sin(y)) + jnp.sum(mean**2) + jnp.sum(jnp.sqrt(var))

  np.testing.assert_allclose(
    jax.grad(ours)(x), jax.grad(reference)(x), rtol=1e-4, atol=1e-5
  )


def test_eval_mode_matches_flax():
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
  ref, ours = _flax_and_ours(True)
  variables = _random_variables(jax.random.key(1), 4)
  np.testing.assert_allclose(
    ours.apply(variables, x), ref.apply(variables, x), rtol=1e-5, atol=1e-6
  )


def test_bfloat16_input_and_output():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4)).astype(jnp.bfloat16)
  ref, ours = _flax_and_ours(False, dtype=jnp.bfloat16)
  variables = _random_variables(jax.random.key(1), 4)
  y_ref, _ = ref.apply(variables, x, mutable=["batch_stats"])
  y_ours, _ = ours.apply(variables, x, mutable=["batch_stats"])
  assert y_ours.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    y_ours.astype(jnp.float32), y_ref.astype(jnp.float32), atol=2e-2
  )
  grad = jax.grad(
    lambda x: (
      ours.apply(variables, x, mutable=["batch_stats"])[0]
      .astype(jnp.float32)
      .sum()
    )
  )(x)
  assert grad.dtype == jnp.bfloat16


def test_unknown_impl_is_an_error():
  with pytest.raises(ValueError, match="batch norm impl"):
    batch_norm.BatchNorm(use_running_average=False, impl="fast").init(
      jax.random.key(0), jnp.ones((2, 3))
    )
