"""Tests for medseg_jax.models.layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax.models import layers


def _zero_kernels(variables):
  """Sets every convolution kernel to zero (a residual branch -> 0)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, v: jnp.zeros_like(v) if path[-1].key == "kernel" else v,
    variables,
  )


@pytest.mark.parametrize("spatial_dims, factor", [(2, 2), (3, 2), (2, 3)])
def test_up_conv_transpose_equals_flax_conv_transpose(spatial_dims, factor):
  d, f = spatial_dims, factor
  x = jax.random.normal(jax.random.key(0), (2, *(3, 4, 5)[:d], 6))
  ours = layers.UpConvTranspose(7, spatial_dims=d, factor=f)
  flax_tconv = nn.ConvTranspose(
    7, (f,) * d, strides=(f,) * d, padding="VALID", kernel_init=layers.conv_init
  )
  variables = ours.init(jax.random.key(1), x)
  # Same parameter names, shapes and initialiser.
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
    jnp.shape, jax.eval_shape(flax_tconv.init, jax.random.key(1), x)
  )
  variables = jax.tree.map(  # A nonzero bias.
    lambda v: v + 0.1 * jnp.arange(v.size).reshape(v.shape), variables
  )
  np.testing.assert_allclose(
    ours.apply(variables, x),
    flax_tconv.apply(variables, x),
    rtol=1e-5,
    atol=1e-5,
  )


def test_up_conv_transpose_without_bias():
  x = jax.random.normal(jax.random.key(0), (1, 3, 4, 5))
  with_bias = layers.UpConvTranspose(6, use_bias=True)
  without = layers.UpConvTranspose(6, use_bias=False)
  variables = without.init(jax.random.key(1), x)
  assert set(variables["params"]) == {"kernel"}
  biased = {"params": {**variables["params"], "bias": jnp.zeros(6)}}
  np.testing.assert_allclose(
    without.apply(variables, x), with_bias.apply(biased, x), atol=1e-6
  )


@pytest.mark.parametrize(
  "in_channels, projected", [(6, False), (3, True)], ids=["identity", "proj"]
)
def test_residual_block_shortcut(in_channels, projected):
  block = layers.ResidualBlock(6, norm="none")
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, in_channels))
  variables = block.init(jax.random.key(1), x, train=False)
  assert ("shortcut" in variables["params"]) == projected
  # A zero residual branch leaves relu(shortcut(x)).
  variables = _zero_kernels(variables)
  y = block.apply(variables, x, train=False)
  assert y.shape == (2, 4, 4, 6)
  if projected:  # Zero kernel, zero bias: nothing left.
    np.testing.assert_array_equal(y, 0.0)
  else:
    np.testing.assert_allclose(y, nn.relu(x), atol=1e-6)


@pytest.mark.parametrize("block_cls", [layers.ConvBlock, layers.ResidualBlock])
def test_blocks_mid_features(block_cls):
  block = block_cls(8, mid_features=4, norm="batch")
  x = jnp.zeros((1, 4, 4, 2))
  shapes = jax.eval_shape(
    lambda x: block.init(jax.random.key(0), x, train=False), x
  )
  params = shapes["params"]
  assert params["conv_0"]["kernel"].shape == (3, 3, 2, 4)
  assert params["conv_1"]["kernel"].shape == (3, 3, 4, 8)
  assert "bias" not in params["conv_0"]  # Batch norm follows.


def test_pad_to_multiple_and_crop():
  x = jnp.arange(2 * 5 * 6 * 3, dtype=jnp.float32).reshape(2, 5, 6, 3)
  padded = layers.pad_to_multiple(x, 4)
  assert padded.shape == (2, 8, 8, 3)
  np.testing.assert_array_equal(padded[:, 5:], 0.0)
  np.testing.assert_array_equal(padded[:, :, 6:], 0.0)
  np.testing.assert_array_equal(layers.crop_spatial(padded, (5, 6)), x)
  assert layers.pad_to_multiple(x, 1) is x
  assert layers.padded_size((5, 6, 8), 4) == (8, 8, 8)


def test_check_image_and_divisible_messages():
  x = jnp.zeros((1, 8, 8, 2))
  layers.check_image(x, model="M", spatial_dims=2, in_channels=2)
  with pytest.raises(ValueError, match=r"M with spatial_dims=3 .*\[B, D, H"):
    layers.check_image(x, model="M", spatial_dims=3)
  with pytest.raises(ValueError, match="M expects 1 input channels"):
    layers.check_image(x, model="M", spatial_dims=2, in_channels=1)
  layers.check_divisible(x, model="M", num_downsamplings=3)
  with pytest.raises(ValueError, match=r"multiples of 16.*\(16, 16\)"):
    layers.check_divisible(x, model="M", num_downsamplings=4)


@pytest.mark.parametrize(
  "spatial_dims,kernel_size,strides,padding,dilation,impl",
  [
    (3, 3, 1, "SAME", 1, "depth_stacked"),
    (3, 5, 1, "SAME", 1, "depth_stacked"),
    (3, 3, 1, "SAME", 1, "xla"),
    (3, 2, 2, "VALID", 1, "depth_stacked"),  # Not stackable: falls back.
    (3, 1, 1, "SAME", 1, "auto"),
    (2, 3, 1, "SAME", 1, "auto"),
    (2, 3, 2, "SAME", 1, "depth_stacked"),
    # ResNet's torchvision-style padding and DeepLab's atrous rates.
    (3, 3, 1, ((2, 2),) * 3, 2, "depth_stacked"),
    (3, 3, 1, "SAME", 3, "auto"),
    (3, 7, 2, ((3, 3),) * 3, 1, "auto"),
    (2, 3, 1, ((2, 2),) * 2, 2, "auto"),
    (2, 3, 2, ((1, 1),) * 2, 1, "auto"),
  ],
)
def test_conv_equals_flax_conv(
  spatial_dims, kernel_size, strides, padding, dilation, impl
):
  d = spatial_dims
  x = jax.random.normal(jax.random.key(0), (2, *(6, 5, 7)[:d], 3))
  ours = layers.Conv(
    4,
    kernel_size,
    spatial_dims=d,
    strides=strides,
    padding=padding,
    kernel_dilation=dilation,
    impl=impl,
  )
  flax_conv = nn.Conv(
    4,
    (kernel_size,) * d,
    strides=(strides,) * d,
    padding=padding,
    kernel_dilation=(dilation,) * d,
    kernel_init=layers.conv_init,
  )
  variables = ours.init(jax.random.key(1), x)
  reference = flax_conv.init(jax.random.key(1), x)
  # Same names, shapes and initial values: checkpoints are interchangeable.
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
    jnp.shape, reference
  )
  np.testing.assert_array_equal(
    variables["params"]["kernel"], reference["params"]["kernel"]
  )
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # A nonzero bias.

  def loss(module, variables, x):
    return jnp.sum(jnp.sin(module.apply(variables, x)))

  np.testing.assert_allclose(
    ours.apply(variables, x), flax_conv.apply(variables, x), atol=1e-5
  )
  ours_grads = jax.grad(loss, argnums=(1, 2))(ours, variables, x)
  flax_grads = jax.grad(loss, argnums=(1, 2))(flax_conv, variables, x)
  for a, b in zip(
    jax.tree.leaves(ours_grads), jax.tree.leaves(flax_grads), strict=True
  ):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (2, 7, 5, 3), (1, 5, 4, 7, 2)])
def test_max_pool_matches_window_max_pool(padding, shape):
  d = len(shape) - 2
  # Random values: no ties, so the gradients must agree exactly.
  x = jax.random.normal(jax.random.key(0), shape)
  weight = jax.random.normal(
    jax.random.key(1), layers.max_pool(x, d, padding).shape
  )

  def ref(x):
    return nn.max_pool(x, (2,) * d, strides=(2,) * d, padding=padding)

  def ours(x):
    return layers.max_pool(x, d, padding, impl="index_routed")

  np.testing.assert_array_equal(ours(x), ref(x))
  np.testing.assert_array_equal(
    jax.grad(lambda x: jnp.sum(ours(x) * weight))(x),
    jax.grad(lambda x: jnp.sum(ref(x) * weight))(x),
  )


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 4, 6, 4, 2)])
def test_max_pool_ties_get_the_window_gradient(shape):
  # Small integers: most blocks hold tied maxima (also all-equal blocks).
  # Like select_and_scatter, the first maximum takes the whole gradient.
  d = len(shape) - 2
  x = jax.random.randint(jax.random.key(0), shape, 0, 3).astype(jnp.float32)
  weight = jax.random.normal(jax.random.key(1), layers.max_pool(x, d).shape)

  def grad(pool):
    return jax.grad(lambda x: jnp.sum(pool(x) * weight))(x)

  np.testing.assert_array_equal(
    grad(lambda x: layers.max_pool(x, d, impl="index_routed")),
    grad(lambda x: nn.max_pool(x, (2,) * d, strides=(2,) * d)),
  )


def test_max_pool_gradient_is_finite_under_jit_with_a_fused_producer():
  # The gradient is routed by an index, never by dividing by a tie count,
  # so it cannot become NaN when XLA recomputes the pooled values.
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  scale = jax.random.normal(jax.random.key(1), (4,))

  @jax.jit
  def grad(x):
    return jax.grad(
      lambda x: jnp.sum(
        layers.max_pool(jax.nn.relu(x * scale + 1.0), 2, impl="index_routed")
      )
    )(x)

  assert bool(jnp.isfinite(grad(x)).all())


def test_max_pool_bad_padding():
  with pytest.raises(ValueError, match="padding"):
    layers.max_pool(jnp.ones((1, 4, 4, 1)), 2, padding="FULL")
