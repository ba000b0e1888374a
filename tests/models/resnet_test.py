"""Tests for medseg_jax.models.resnet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax.models import resnet
from tests.models import model_testing

WIDTH = 1 / 16  # 4-channel stem; ResNet-50's layer4 has 128 channels.


@pytest.mark.parametrize(
  "depth, channels",
  [
    (18, (4, 4, 8, 16, 32)),
    (50, (4, 16, 32, 64, 128)),
  ],
)
def test_stage_shapes_for_indivisible_2d_size(depth, channels):
  # 33 x 45: every strided layer rounds up, 33 -> 17 -> 9 -> 5 -> 3 -> 2.
  model = resnet.ResNet(depth=depth, width=WIDTH)
  _, out = model_testing.abstract(model, (2, 33, 45, 1))
  sizes = [(17, 23), (9, 12), (5, 6), (3, 3), (2, 2)]
  assert set(out) == set(resnet.STAGES)
  for key, size, c in zip(resnet.STAGES, sizes, channels, strict=True):
    assert out[key].shape == (2, *size, c), key
  assert model.output_channels == channels[-1]


def test_stage_shapes_3d():
  model = resnet.ResNet(depth=18, width=WIDTH, spatial_dims=3)
  variables, out = model_testing.abstract(model, (1, 9, 16, 17, 1))
  assert out["layer4"].shape == (1, 1, 1, 1, 32)
  assert out["layer1"].shape == (1, 3, 4, 5, 4)
  assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 7, 1, 4)


@pytest.mark.slow
@pytest.mark.parametrize("output_stride, size", [(32, 2), (16, 4), (8, 8)])
def test_dilation_sets_output_stride_without_new_parameters(
  output_stride, size
):
  flags = resnet.dilation_for_output_stride(output_stride)
  model = resnet.ResNet(
    depth=50, width=WIDTH, replace_stride_with_dilation=flags
  )
  variables, out = model_testing.abstract(model, (1, 64, 64, 3))
  assert out["layer4"].shape[1:3] == (size, size)
  assert out["layer1"].shape[1:3] == (16, 16)
  reference, _ = model_testing.abstract(
    resnet.ResNet(depth=50, width=WIDTH), (1, 64, 64, 3)
  )
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
    jnp.shape, reference
  )


def test_stride_two_windows_are_centred_like_torchvision():
  # A kernel that copies its centre tap: with symmetric padding, output i of
  # a stride-2 convolution is input 2i (torchvision); Flax's 'SAME' padding
  # would give input 2i + 1 for even sizes.
  def centre(key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype).at[shape[0] // 2, shape[1] // 2].set(1.0)

  for kernel_size in (1, 3, 7):
    layer = resnet.conv(
      1, kernel_size, spatial_dims=2, strides=2, kernel_init=centre
    )
    x = jnp.arange(8.0 * 6.0).reshape(1, 8, 6, 1)
    y = layer.apply(layer.init(jax.random.key(0), x), x)
    np.testing.assert_array_equal(y, x[:, ::2, ::2])


# torchvision.models.resnet{18,34,50,101,152}: the `num_params` of the
# IMAGENET1K_V1 weights in torchvision's model documentation
# (https://pytorch.org/vision/stable/models.html), minus the final fc layer
# (512 * 1000 + 1000 = 513,000 for basic blocks, 2048 * 1000 + 1000 =
# 2,049,000 for bottlenecks), which the backbone leaves out.
TORCHVISION_PARAMS = {
  18: (11_689_512, 513_000),
  34: (21_797_672, 513_000),
  50: (25_557_032, 2_049_000),
  101: (44_549_160, 2_049_000),
  152: (60_192_808, 2_049_000),
}


@pytest.mark.slow
@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_torchvision_parameter_count(depth):
  # Hand check for ResNet-50 (conv weights without bias, BN scale + bias):
  # stem 7*7*3*64 + 128 = 9,536; layer1 215,808; layer2 1,219,584;
  # layer3 7,098,368; layer4 14,964,736; total 23,508,032.
  published, fc = TORCHVISION_PARAMS[depth]
  model = resnet.ResNet(depth=depth, in_channels=3)
  variables, _ = model_testing.abstract(model, (1, 32, 32, 3))
  assert model_testing.num_params(variables["params"]) == published - fc
  # Running statistics: a mean and a variance per BN channel.
  assert set(variables) == {"params", "batch_stats"}


@pytest.mark.slow
@pytest.mark.parametrize(
  "block, out_channels, names",
  [
    (resnet.BasicBlock(8, strides=2, dilation=2, downsample=True), 8, 6),
    (resnet.Bottleneck(4, strides=2, dilation=2, downsample=True), 16, 8),
  ],
)
def test_block_gradients_finite_and_batch_stats_updated(
  block, out_channels, names
):
  # Whole-network gradients (ResNet-18 inside DeepLabV3+) are checked in
  # deeplab_test.py; compiling a ResNet-50 backward pass takes long, so its
  # bottleneck block, strided and dilated with a projection shortcut, is
  # checked alone.
  variables, x = model_testing.init(block, (2, 9, 11, 6), host_dtype=np.float32)

  def loss_fn(params):
    out, updates = block.apply(
      {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
    )
    assert out.shape == (2, 5, 6, out_channels)
    return jnp.mean(out**2), updates

  grads, updates = model_testing.jit(jax.grad(loss_fn, has_aux=True))(
    variables["params"]
  )
  assert len(grads) == names  # conv1, bn1, ..., downsample_conv/bn.
  model_testing.assert_finite(grads, nonzero=True)
  model_testing.assert_all_changed(
    variables["batch_stats"], updates["batch_stats"]
  )


@pytest.mark.parametrize("norm", ["group", "instance", "none"])
def test_other_norms(norm):
  model = resnet.ResNet(depth=50, width=WIDTH, norm=norm)
  variables, out = model_testing.abstract(model, (1, 33, 45, 1))
  assert set(variables) == {"params"}
  assert out["layer4"].shape == (1, 2, 2, 128)
  # A bias before a learned shift is redundant: only norm="none" has one.
  assert ("bias" in variables["params"]["conv1"]) == (norm == "none")


@pytest.mark.slow
def test_jit_equals_eager():
  model = resnet.ResNet(
    depth=18, width=WIDTH, replace_stride_with_dilation=(False, True, True)
  )
  variables, x = model_testing.init(
    model, (1, 33, 45, 2), host_dtype=np.float32
  )
  eager = model.apply(variables, x, train=False)
  jitted = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  for key in resnet.STAGES:
    np.testing.assert_allclose(jitted[key], eager[key], rtol=1e-4, atol=1e-4)


def test_wrong_ndim_raises():
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    resnet.ResNet(depth=18).init(
      jax.random.key(0), jnp.zeros((16, 16, 1)), train=False
    )
  with pytest.raises(ValueError, match=r"\[B, D, H, W, C\]"):
    resnet.ResNet(depth=18, spatial_dims=3).init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False
    )


def test_wrong_channels_raises():
  model = resnet.ResNet(depth=18, width=WIDTH, in_channels=3)
  with pytest.raises(ValueError, match=r"3 input channels.*\[B, H, W, C\]"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"depth": 20}, "depth"),
    ({"norm": "layer"}, "norm"),
    ({"spatial_dims": 1}, "spatial_dims"),
    ({"replace_stride_with_dilation": (True,)}, "3 flags"),
    ({"width": 0.0}, "width"),
  ],
)
def test_bad_config_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    resnet.ResNet(**kwargs)


def test_bad_output_stride_raises():
  with pytest.raises(ValueError, match=r"\[8, 16, 32\]"):
    resnet.dilation_for_output_stride(4)
