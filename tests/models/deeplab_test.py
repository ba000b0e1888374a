"""Tests for medseg_jax.models.deeplab."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax.models import deeplab
from tests.models import model_testing

# A narrow network: ResNet width 1/16 and 16-channel ASPP and decoder.
TINY = {"width": 1 / 16, "aspp_features": 16}
TINY_PLUS = {**TINY, "low_level_features": 8, "decoder_features": 16}


def _model(cls, **kwargs):
  return cls(**(TINY_PLUS if cls is deeplab.DeepLabV3Plus else TINY), **kwargs)


@pytest.mark.parametrize("cls", [deeplab.DeepLabV3, deeplab.DeepLabV3Plus])
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_output_shape_2d(cls, output_stride, backbone):
  model = _model(
    cls, num_classes=3, output_stride=output_stride, backbone=backbone
  )
  _, logits = model_testing.abstract(model, (2, 33, 45, 1))
  model_testing.assert_logits(logits, (2, 33, 45, 1), 3)


@pytest.mark.parametrize("cls", [deeplab.DeepLabV3, deeplab.DeepLabV3Plus])
@pytest.mark.parametrize(
  "shape", [(1, 1, 5, 1), (1, 97, 31, 1), (1, 64, 64, 1)]
)
def test_output_shape_any_size(cls, shape):
  _, logits = model_testing.abstract(
    _model(cls, num_classes=2, backbone="resnet18"), shape
  )
  assert logits.shape == shape[:-1] + (2,)


@pytest.mark.parametrize("cls", [deeplab.DeepLabV3, deeplab.DeepLabV3Plus])
def test_output_shape_3d(cls):
  model = _model(cls, num_classes=2, backbone="resnet18", spatial_dims=3)
  variables, logits = model_testing.abstract(model, (1, 9, 10, 11, 1))
  assert logits.shape == (1, 9, 10, 11, 2)
  kernel = variables["params"]["aspp"]["atrous_0"]["conv"]["kernel"]
  assert kernel.shape == (3, 3, 3, 32, 16)


def test_atrous_rates():
  assert _model(deeplab.DeepLabV3, num_classes=2).rates == (6, 12, 18)
  assert _model(deeplab.DeepLabV3, num_classes=2, output_stride=8).rates == (
    12,
    24,
    36,
  )
  model = _model(deeplab.DeepLabV3, num_classes=2, atrous_rates=(2, 4))
  variables, _ = model_testing.abstract(model, (1, 32, 32, 1))
  assert set(variables["params"]["aspp"]) == {
    "conv_1x1",
    "atrous_0",
    "atrous_1",
    "pooling",
    "project",
  }
  # 1x1 + two atrous + pooling branches of 16 channels feed the projection.
  project = variables["params"]["aspp"]["project"]["conv"]["kernel"]
  assert project.shape == (1, 1, 4 * 16, 16)


def test_aspp_branches_see_their_rate():
  # A single nonzero feature at the centre of a 33 x 33 map: a branch with
  # rate r responds at distance r from it and nowhere else outside its
  # 3 x 3 dilated footprint.
  layer = deeplab.ConvNormReLU(1, kernel_size=3, dilation=6, norm="none")
  x = jnp.zeros((1, 33, 33, 1)).at[0, 16, 16, 0].set(1.0)
  ones = {
    "params": {"conv": {"kernel": jnp.ones((3, 3, 1, 1)), "bias": jnp.zeros(1)}}
  }
  y = layer.apply(ones, x, train=False)[0, :, :, 0]
  assert set(zip(*np.nonzero(np.asarray(y)), strict=True)) == {
    (16 + i, 16 + j) for i in (-6, 0, 6) for j in (-6, 0, 6)
  }


# torchvision's deeplabv3_resnet50/101 (COCO_WITH_VOC_LABELS_V1, 21
# classes): `num_params` 42,004,074 and 60,996,202 in the torchvision model
# documentation (https://pytorch.org/vision/stable/models.html). These
# include the auxiliary FCNHead on layer3 (aux_loss=True): 3x3 1024->256 no
# bias = 2,359,296, BN 512, 1x1 256->21 + bias = 5,397; 2,365,205 in all.
# Without it (aux_loss=False): 39,638,869 and 58,630,997.
# Hand count of the rest: ResNet-50 without fc 23,508,032 (ResNet-101
# 42,500,160); ASPP 1x1 2048->256 524,288, three 3x3 atrous 2048->256
# 3 * 4,718,592, pooling 1x1 2048->256 524,288, projection 1x1 1280->256
# 327,680, six BN 6 * 512: 15,535,104; head 3x3 256->256 589,824 + BN 512;
# classifier 256*21 + 21 = 5,397. 23,508,032 + 15,535,104 + 590,336 +
# 5,397 = 39,638,869.
# The issue quotes 39,633,986 and 58,626,114: those are the num_classes=2
# models (classifier 514 instead of 5,397), checked here too.
AUX_HEAD = 2_359_296 + 512 + 5_397


@pytest.mark.parametrize(
  "backbone, num_classes, expected",
  [
    ("resnet50", 21, 42_004_074 - AUX_HEAD),
    ("resnet101", 21, 60_996_202 - AUX_HEAD),
    ("resnet50", 2, 39_633_986),
    ("resnet101", 2, 58_626_114),
  ],
)
def test_torchvision_parameter_count(backbone, num_classes, expected):
  model = deeplab.DeepLabV3(
    num_classes=num_classes, backbone=backbone, in_channels=3
  )
  variables, _ = model_testing.abstract(model, (1, 32, 32, 3))
  assert model_testing.num_params(variables["params"]) == expected
  assert model_testing.num_params(variables["params"]["aspp"]) == 15_535_104


def test_deeplabv3plus_parameter_count():
  # No torchvision reference; hand count for ResNet-101, 21 classes, the
  # paper's decoder (48-channel 1x1 projection of layer1, two 3x3 256
  # convolutions): 58,630,997 (DeepLabV3 above) - 590,336 (no 3x3 head
  # after ASPP) + 256*48 + 96 (projection + BN) + 9*304*256 + 512 +
  # 9*256*256 + 512 = 59,344,309.
  model = deeplab.DeepLabV3Plus(num_classes=21, backbone="resnet101")
  variables, _ = model_testing.abstract(model, (1, 32, 32, 3))
  assert model_testing.num_params(variables["params"]) == 59_344_309


@pytest.mark.slow
def test_gradients_finite_and_batch_stats_updated():
  # DeepLabV3+ exercises everything DeepLabV3 has but its 3x3 head conv;
  # output stride 8 dilates two stages.
  model = _model(
    deeplab.DeepLabV3Plus, num_classes=3, backbone="resnet18", output_stride=8
  )
  variables, x = model_testing.init(
    model, (2, 33, 45, 1), host_dtype=np.float32
  )
  grads, updates = model_testing.train_gradients(
    model, variables, x, 3, rngs={"dropout": jax.random.key(3)}
  )
  model_testing.assert_finite(grads, nonzero=True)
  model_testing.assert_all_changed(
    variables["batch_stats"], updates["batch_stats"]
  )


@pytest.mark.slow
def test_init_and_apply_under_jit():
  model = _model(deeplab.DeepLabV3, num_classes=2, backbone="resnet18")
  x = jax.random.normal(jax.random.key(0), (2, 33, 45, 1))
  variables = model_testing.jit(lambda k, x: model.init(k, x, train=False))(
    jax.random.key(1), x
  )
  # The real initialisers (other tests draw variables on the host).
  expected = model_testing.abstract_variables(model, x.shape)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, expected)
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(leaf)))
  backbone_stats = variables["batch_stats"]["backbone"]
  np.testing.assert_array_equal(backbone_stats["bn1"]["var"], 1.0)
  np.testing.assert_array_equal(backbone_stats["layer2_0"]["bn1"]["mean"], 0.0)
  apply = model_testing.jit(lambda v, x: model.apply(v, x, train=False))
  logits = apply(variables, x)
  assert logits.shape == (2, 33, 45, 2)
  assert bool(jnp.all(jnp.isfinite(logits)))
  # Evaluation uses running statistics: one example does not depend on the
  # rest of the batch.
  x2 = x.at[1].set(3.0 * x[1] + 1.0)
  np.testing.assert_allclose(
    apply(variables, x2)[:1], logits[:1], rtol=1e-4, atol=1e-5
  )


@pytest.mark.parametrize("cls", [deeplab.DeepLabV3, deeplab.DeepLabV3Plus])
def test_wrong_ndim_raises(cls):
  model = _model(cls, num_classes=2, backbone="resnet18")
  with pytest.raises(ValueError, match=cls.__name__ + r".*\[B, H, W, C\]"):
    model.init(jax.random.key(0), jnp.zeros((32, 32, 1)), train=False)
  model3d = _model(cls, num_classes=2, backbone="resnet18", spatial_dims=3)
  with pytest.raises(ValueError, match=r"\[B, D, H, W, C\]"):
    model3d.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)


def test_wrong_channels_raises():
  model = _model(deeplab.DeepLabV3, num_classes=2, in_channels=3)
  with pytest.raises(ValueError, match=r"3 input channels.*\[B, H, W, C\]"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"output_stride": 32}, "output_stride"),
    ({"backbone": "vgg16"}, "resnet50"),
    ({"norm": "layer"}, "norm"),
    ({"spatial_dims": 1}, "spatial_dims"),
    ({"num_classes": 0}, "num_classes"),
  ],
)
@pytest.mark.parametrize("cls", [deeplab.DeepLabV3, deeplab.DeepLabV3Plus])
def test_bad_config_raises(cls, kwargs, message):
  with pytest.raises(ValueError, match=message):
    cls(**{"num_classes": 2, **kwargs})
