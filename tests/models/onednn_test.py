"""Tests for medseg_jax.models.onednn (oneDNN convolutions, optional).

The comparisons need the library (`make onednn`); without it they skip and
only the fallback is tested.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging

from medseg_jax import models
from medseg_jax.models import lowering
from medseg_jax.models import onednn

needs_library = pytest.mark.skipif(
  not onednn.available(),
  reason="oneDNN custom call not built (make onednn)",
)

# (input shape, kernel shape, strides, padding, dilation).
CASES = [
  ((2, 16, 16, 3), (3, 3, 3, 8), (1, 1), "SAME", (1, 1)),
  ((2, 17, 15, 5), (3, 3, 5, 7), (2, 2), "SAME", (1, 1)),
  ((2, 17, 15, 5), (3, 3, 5, 7), (2, 1), "VALID", (1, 1)),
  ((1, 16, 16, 4), (3, 3, 4, 6), (1, 1), "SAME", (2, 3)),
  ((2, 12, 12, 4), (5, 5, 4, 2), (1, 1), ((2, 1), (0, 3)), (1, 1)),
  ((2, 16, 16, 4), (1, 1, 4, 6), (1, 1), "VALID", (1, 1)),
  ((2, 8, 9, 10, 3), (3, 3, 3, 3, 5), (1, 1, 1), "SAME", (1, 1, 1)),
  (
    (1, 9, 8, 8, 2),
    (3, 3, 3, 2, 4),
    (2, 2, 2),
    ((1, 0), (1, 1), (0, 2)),
    (1, 1, 1),
  ),
  ((1, 10, 10, 10, 2), (3, 3, 3, 2, 3), (1, 1, 1), "SAME", (2, 2, 2)),
  # More high padding than the last window reaches (ResNet's stem at an odd
  # size): trimmed by explicit_padding.
  ((2, 6, 5, 3), (7, 7, 3, 4), (2, 2), ((3, 3),) * 2, (1, 1)),
  ((2, 6, 5, 7, 3), (3, 3, 3, 3, 4), (2, 2, 2), ((1, 1),) * 3, (1, 1, 1)),
]


def _xla_conv(x, k, strides, padding, dilation):
  d = k.ndim - 2
  spec = "NDHWC" if d == 3 else "NHWC"
  return jax.lax.conv_general_dilated(
    x,
    k,
    strides,
    padding,
    rhs_dilation=dilation,
    dimension_numbers=(spec, ("DHW" if d == 3 else "HW") + "IO", spec),
  )


@needs_library
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_gradients_equal_xla(case, dtype):
  shape, kshape, strides, padding, dilation = case
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), dtype)
  k = jnp.asarray(rng.standard_normal(kshape), dtype)
  pads = onednn.explicit_padding(shape, kshape, strides, padding, dilation)
  xla = functools.partial(
    _xla_conv, strides=strides, padding=pads, dilation=dilation
  )
  ours = functools.partial(
    onednn.conv, strides=strides, padding=pads, dilation=dilation
  )
  y_xla = xla(x, k)
  dy = jnp.asarray(rng.standard_normal(y_xla.shape), dtype)
  y, vjp = jax.vjp(ours, x, k)
  _, vjp_xla = jax.vjp(xla, x, k)
  # float32: 1e-4 of the largest entry. bfloat16 results carry 8
  # significant bits: both round float32 sums, so they agree to 2^-7.
  tol = 1e-4 if dtype == "float32" else 2.0**-7
  results = zip(
    [y, *jax.jit(vjp)(dy)], [y_xla, *jax.jit(vjp_xla)(dy)], strict=True
  )
  for got, want in results:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= tol * scale, (
      np.abs(got - want).max() / scale
    )


@needs_library
def test_conv_general_leaves_unread_rows_to_xla():
  # VALID, stride 2 on 8: the last input row is never read, so its input
  # gradient is zero; oneDNN would need a negative padding, XLA does it.
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 2))
  k = jax.random.normal(jax.random.key(1), (3, 3, 2, 2))
  pads = onednn.explicit_padding(x.shape, k.shape, (2, 2), "VALID", (1, 1))
  assert pads == ((0, -1), (0, -1))
  assert not onednn.supports(x, k, pads)

  def loss(x, k):
    y = lowering.conv_general(x, k, (2, 2), "VALID", (1, 1))
    return (y**2).sum()

  with lowering.override(conv_library="onednn"):
    dx, dk = jax.grad(loss, (0, 1))(x, k)
  dx_ref, dk_ref = jax.grad(
    lambda x, k: (_xla_conv(x, k, (2, 2), "VALID", (1, 1)) ** 2).sum(), (0, 1)
  )(x, k)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, dk_ref, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(dx)[:, -1] == 0)


@needs_library
def test_wide_3d_kernels_stay_with_xla():
  # oneDNN 2026.1's backward weights is wrong for some of these;
  # conv_general keeps them on XLA, whose gradient it then equals.
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 6, 3))
  k = jax.random.normal(jax.random.key(1), (7, 7, 7, 3, 4))
  pads = onednn.explicit_padding(x.shape, k.shape, (2,) * 3, "SAME", (1,) * 3)
  assert not onednn.supports(x, k, pads)

  def loss(conv, k):
    return (conv(x, k) ** 2).sum()

  with lowering.override(conv_library="onednn"):
    got = jax.grad(
      lambda k: loss(
        lambda x, k: lowering.conv_general(x, k, (2,) * 3, "SAME", (1,) * 3),
        k,
      )
    )(k)
  want = jax.grad(
    lambda k: loss(lambda x, k: _xla_conv(x, k, (2,) * 3, "SAME", (1,) * 3), k)
  )(k)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@needs_library
def test_weight_gradient_matches_a_brute_force_sum():
  # Independent of XLA: dK[i, j, c, o] = sum_{b,h,w} xpad[b, h+i, w+j, c]
  # * dy[b, h, w, o] for a stride-1 'SAME' 3x3 convolution.
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
  dy = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
  xpad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros((3, 3, 3, 4))
  for i in range(3):
    for j in range(3):
      want[i, j] = np.einsum("bhwc,bhwo->co", xpad[:, i : i + 6, j : j + 5], dy)
  got = jax.jit(
    lambda x, dy: onednn.conv_weight_grad(
      x, dy, (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), (1, 1)
    )
  )(x, dy)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@needs_library
def test_unet_gradients_equal_with_and_without_onednn():
  model = models.get_model(
    "unet",
    num_classes=3,
    spatial_dims=2,
    in_channels=1,
    features=(4, 8),
    norm="batch",
  )
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
  variables = model.init(jax.random.key(1), x, train=False)

  def loss(params):
    logits, _ = model.apply(
      {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
    )
    return (logits**2).mean()

  def grads():
    return jax.jit(jax.grad(loss))(variables["params"])

  with lowering.override(conv_library="onednn"):
    with_onednn = grads()
  with lowering.override(conv_library="xla"):
    without = grads()
  for got, want in zip(
    jax.tree.leaves(with_onednn), jax.tree.leaves(without), strict=True
  ):
    scale = np.abs(np.asarray(want)).max() + 1e-12
    assert np.abs(np.asarray(got) - np.asarray(want)).max() <= 1e-4 * scale


def test_unbuilt_library_falls_back_to_xla(monkeypatch, tmp_path, caplog):
  monkeypatch.setattr(onednn, "LIBRARY", tmp_path / "missing.so")
  monkeypatch.setattr(lowering, "_LOGGED", set())
  onednn.available.cache_clear()
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.DEBUG)
  try:
    with caplog.at_level("DEBUG"):
      assert not onednn.available()
      assert lowering.choose("cpu").conv_library == "xla"
    assert "make onednn" in caplog.text
  finally:
    absl_logging.set_verbosity(verbosity)
    onednn.available.cache_clear()


def test_only_where_the_process_has_one_device():
  # XLA does not partition a custom call: with several devices (the tests'
  # 8 fake CPUs) the convolutions stay XLA's unless forced.
  assert jax.device_count() > 1
  assert lowering.choose("cpu").conv_library == "xla"


def test_with_onednn_3d_convolutions_stay_3d_up_to_width_3():
  # oneDNN's 3-D convolution beats the depth-stacked one; wider kernels,
  # which oneDNN does not take, stay depth-stacked.
  args = dict(spatial_dims=3, strides=1, padding="SAME")
  with lowering.override(conv_library="onednn"):
    assert lowering.conv_impl_for("auto", kernel_size=3, **args) == "xla"
    assert lowering.conv_impl_for("auto", kernel_size=5, **args) == (
      "depth_stacked"
    )
  with lowering.override(conv_library="xla"):
    assert lowering.conv_impl_for("auto", kernel_size=3, **args) == (
      "depth_stacked"
    )
