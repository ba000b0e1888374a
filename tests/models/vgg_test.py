"""Tests for medseg_jax.models.vgg."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax.models import vgg
from tests.models import model_testing

WIDTH = 1 / 16  # 4 ... 32 convolution channels, 256 in fc6/fc7.


def test_feature_shapes_for_indivisible_2d_size():
  # 'SAME' pooling rounds up: 33 -> 17 -> 9 -> 5 -> 3 -> 2.
  _, out = model_testing.abstract(vgg.VGG(width=WIDTH), (2, 33, 45, 1))
  expected = {
    "pool1": (2, 17, 23, 4),
    "pool2": (2, 9, 12, 8),
    "pool3": (2, 5, 6, 16),
    "pool4": (2, 3, 3, 32),
    "pool5": (2, 2, 2, 32),
    "fc7": (2, 2, 2, 256),
  }
  assert {k: v.shape for k, v in out.items()} == expected


def test_feature_shapes_3d():
  model = vgg.VGG(width=WIDTH, spatial_dims=3, fc_kernel_size=3)
  variables, out = model_testing.abstract(model, (1, 8, 16, 20, 2))
  assert out["pool3"].shape == (1, 1, 2, 3, 16)
  assert out["fc7"].shape == (1, 1, 1, 1, 256)
  assert variables["params"]["fc6"]["kernel"].shape == (3, 3, 3, 32, 256)


def test_without_fc():
  model = vgg.VGG(width=WIDTH, fc=False)
  variables, out = model_testing.abstract(model, (1, 32, 32, 1))
  assert "fc7" not in out and "fc6" not in variables["params"]
  assert model.output_channels == 32


@pytest.mark.parametrize(
  "depth, convs", [(11, 8), (13, 10), (16, 13), (19, 16)]
)
def test_depths(depth, convs):
  variables, _ = model_testing.abstract(
    vgg.VGG(depth=depth, width=WIDTH), (1, 32, 32, 1)
  )
  names = [n for n in variables["params"] if n.startswith("conv")]
  assert len(names) == convs


def test_vgg16_parameter_count():
  # torchvision.models.vgg16 has 138,357,544 parameters (`num_params` of
  # VGG16_Weights.IMAGENET1K_V1, https://pytorch.org/vision/stable/models.html;
  # also Simonyan & Zisserman, Table 2: 138M). Without fc8 (4096 * 1000 +
  # 1000 = 4,097,000): 134,260,544. By hand, 3x3 convolutions with bias:
  # 1,792 + 36,928 + 73,856 + 147,584 + 295,168 + 2 * 590,080 + 1,180,160
  # + 5 * 2,359,808 = 14,714,688; fc6 7*7*512*4096 + 4096 = 102,764,544;
  # fc7 4096*4096 + 4096 = 16,781,312.
  model = vgg.VGG(depth=16, norm="none", in_channels=3)
  variables, _ = model_testing.abstract(model, (1, 32, 32, 3))
  assert set(variables) == {"params"}
  assert (
    model_testing.num_params(variables["params"]) == 138_357_544 - 4_097_000
  )
  conv_only, _ = model_testing.abstract(
    vgg.VGG(depth=16, fc=False), (1, 32, 32, 3)
  )
  assert model_testing.num_params(conv_only["params"]) == 14_714_688


def test_batch_norm_replaces_biases():
  variables, _ = model_testing.abstract(
    vgg.VGG(width=WIDTH, norm="batch"), (1, 32, 32, 1)
  )
  assert "bias" not in variables["params"]["conv1_1"]
  assert set(variables["batch_stats"]["bn1_1"]) == {"mean", "var"}
  assert set(variables["params"]["bn6"]) == {"scale", "bias"}


@pytest.mark.slow
def test_dropout_in_training_only():
  # Gradients through VGG are checked in fcn_test.py (FCN-8s over VGG-16)
  # and its real initialisation there too; here the variables are drawn on
  # the host to save the initialisers' compile time.
  model = vgg.VGG(width=WIDTH)
  variables, x = model_testing.init(
    model, (2, 33, 45, 1), host_dtype=np.float32
  )
  apply = model_testing.jit(
    lambda v, x, key: (
      model.apply(v, x, train=True, rngs={"dropout": key})["fc7"],
      model.apply(v, x, train=False)["fc7"],
    )
  )
  train_out, eval_out = apply(variables, x, jax.random.key(3))
  assert bool(jnp.any(train_out != eval_out))
  eager = model.apply(variables, x, train=False)["fc7"]
  np.testing.assert_allclose(eval_out, eager, rtol=1e-4, atol=1e-5)


def test_wrong_ndim_raises():
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    vgg.VGG().init(jax.random.key(0), jnp.zeros((32, 32, 1)), train=False)


def test_wrong_channels_raises():
  model = vgg.VGG(width=WIDTH, in_channels=3)
  with pytest.raises(ValueError, match=r"3 input channels.*\[B, H, W, C\]"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"depth": 17}, "depth"),
    ({"norm": "layer"}, "norm"),
    ({"spatial_dims": 4}, "spatial_dims"),
    ({"fc_kernel_size": 4}, "odd"),
    ({"width": -1.0}, "width"),
  ],
)
def test_bad_config_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    vgg.VGG(**kwargs)
