"""Tests for medseg_jax.models.vnet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax.models import layers
from medseg_jax.models.vnet import PReLU
from medseg_jax.models.vnet import ResidualStage
from medseg_jax.models.vnet import VNet
from tests.models import model_testing

# Tiny: three stages of 4, 8, 16 channels, one or two 5^d convolutions each;
# two stages where values are computed (compiling 5^d convolutions dominates).
TINY = {"features": (4, 8, 16), "convs": (1, 2, 2)}
TINY2 = {"features": (4, 8), "convs": (1, 2)}
SHAPES = {2: (2, 8, 12, 1), 3: (1, 8, 4, 8, 1)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("norm", layers.NORMS)
def test_output_shape_each_norm(spatial_dims, norm):
  shape = SHAPES[spatial_dims]
  model = VNet(num_classes=3, spatial_dims=spatial_dims, norm=norm, **TINY)
  variables, (logits, state) = model_testing.abstract(
    model, shape, mutable=["batch_stats"], train=True
  )
  model_testing.assert_logits(logits, shape, 3)
  assert set(variables) == (
    {"params", "batch_stats"} if norm == "batch" else {"params"}
  )
  assert set(state) == ({"batch_stats"} if norm == "batch" else set())
  params = variables["params"]
  assert params["encoder_0"]["conv_0"]["kernel"].shape == (
    (5,) * spatial_dims + (1, 4)
  )
  # Convolutions before a norm carry no bias.
  assert ("bias" in params["encoder_1"]["conv_0"]) == (norm == "none")
  assert ("bias" in params["up_0"]["conv_transpose"]) == (norm == "none")


def test_stage_layout():
  model = VNet(num_classes=2, spatial_dims=2, norm="none", **TINY)
  variables, _ = model_testing.abstract(model, SHAPES[2])
  params = variables["params"]
  assert set(params) == {
    "encoder_0",
    "down_0",
    "encoder_1",
    "down_1",
    "encoder_2",
    "up_1",
    "decoder_1",
    "up_0",
    "decoder_0",
    "head",
  }

  def convs(stage):
    return sum(name.startswith("conv_") for name in params[stage])

  # Encoder (1, 2, 2); decoder defaults to convs[:-1], finest first.
  assert [convs(f"encoder_{k}") for k in range(3)] == [1, 2, 2]
  assert [convs(f"decoder_{k}") for k in range(2)] == [1, 2]
  # Strided convolution doubles the channels; the transposed one maps to
  # features[k], concatenated with the skip to 2 * features[k].
  assert params["down_0"]["conv"]["kernel"].shape == (2, 2, 4, 8)
  assert params["up_1"]["conv_transpose"]["kernel"].shape == (2, 2, 16, 8)
  assert params["decoder_1"]["conv_0"]["kernel"].shape == (5, 5, 16, 16)
  assert params["decoder_0"]["conv_0"]["kernel"].shape == (5, 5, 8, 8)
  assert params["head"]["kernel"].shape == (1, 1, 8, 2)
  # Channel-wise PReLU slopes.
  assert params["decoder_1"]["prelu_1"]["negative_slope"].shape == (16,)


def test_prelu_is_channelwise():
  x = jnp.array([[-2.0, -2.0], [3.0, 3.0]])
  variables = {"params": {"negative_slope": jnp.array([0.1, 0.5])}}
  np.testing.assert_allclose(
    PReLU().apply(variables, x), [[-0.2, -1.0], [3.0, 3.0]], rtol=1e-6
  )
  default = PReLU().init(jax.random.key(0), x)
  np.testing.assert_array_equal(default["params"]["negative_slope"], 0.25)


@pytest.mark.parametrize(
  "in_channels, projected", [(1, False), (6, False), (3, True)]
)
def test_residual_stage_adds_its_input(in_channels, projected):
  stage = ResidualStage(6, num_convs=2, spatial_dims=2, norm="none")
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, in_channels))
  variables = stage.init(jax.random.key(1), x, train=False)
  assert ("shortcut" in variables["params"]) == projected
  # With the stage's convolutions zeroed, the last one outputs its bias b
  # and only the residual is left: prelu(b + s) with s = x (6 channels),
  # x broadcast over all 6 channels (1 channel), or x @ W + c (else: the
  # 1x1 projection's kernel W and bias c, kept). Biases are made nonzero.
  rng = np.random.default_rng(0)
  params = {
    name: {
      key: np.zeros(v.shape, np.float32)
      if key == "kernel" and name.startswith("conv_")
      else rng.normal(size=v.shape).astype(np.float32)
      if key in ("kernel", "bias")
      else np.asarray(v)
      for key, v in layer.items()
    }
    for name, layer in variables["params"].items()
  }
  y = stage.apply({"params": params}, x, train=False)
  assert y.shape == (1, 4, 4, 6)
  x = np.asarray(x, np.float64)
  if projected:
    shortcut = params["shortcut"]
    residual = x @ shortcut["kernel"].reshape(in_channels, 6) + shortcut["bias"]
  else:
    residual = np.broadcast_to(x, y.shape)
  z = params["conv_1"]["bias"] + residual
  expected = np.where(z >= 0, z, params["prelu_1"]["negative_slope"] * z)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_gradients_finite():
  model = VNet(num_classes=3, spatial_dims=2, norm="batch", **TINY2)
  variables, x = model_testing.init(model, SHAPES[2])
  grads, _ = model_testing.train_gradients(model, variables, x, 3)
  model_testing.assert_finite(grads, nonzero=True)


@pytest.mark.slow
def test_jit_equals_eager():
  model = VNet(num_classes=2, spatial_dims=2, norm="instance", **TINY2)
  variables, x = model_testing.init(model, SHAPES[2])
  eager = model.apply(variables, x, train=False)
  jitted = model_testing.jit(lambda v, x: model.apply(v, x, train=False))(
    variables, x
  )
  np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-5)


def test_3d_forward_finite():
  model = VNet(num_classes=2, spatial_dims=3, norm="batch", **TINY2)
  variables, x = model_testing.init(model, SHAPES[3])
  logits, _ = model_testing.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  )(variables, x)
  assert logits.shape == SHAPES[3][:-1] + (2,)
  assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.slow
def test_input_errors_and_padding():
  model = VNet(num_classes=2, in_channels=1, **TINY)  # 3-D by default.
  model_testing.assert_rejects(
    model,
    [
      ((1, 8, 8, 1), r"\[B, D, H, W, C\]"),
      ((1, 8, 8, 8, 2), "1 input channels"),
      ((1, 8, 8, 10, 1), r"multiples of 4.*\(8, 8, 12\)"),
    ],
  )
  padded = VNet(num_classes=2, pad_input=True, **TINY)
  _, logits = model_testing.abstract(padded, (1, 5, 8, 10, 1))
  assert logits.shape == (1, 5, 8, 10, 2)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"norm": "layer"}, "norm"),
    ({"spatial_dims": 1}, "spatial_dims"),
    ({"features": (8,), "convs": (1,)}, "two entries"),
    ({"features": (4, 8), "convs": (1, 2, 3)}, "one entry per stage"),
    ({"features": (4, 8), "convs": (1, 2), "decoder_convs": (1, 1)}, "1 entr"),
    ({"features": (4, 8), "convs": (0, 2)}, "at least one convolution"),
  ],
)
def test_bad_config_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    VNet(num_classes=2, **kwargs)


def test_paper_parameter_count():
  # Milletari et al. (2016), Fig. 2 and Sec. 2: 1 input channel, 2 classes,
  # 5x5x5 convolutions, stages of 16, 32, 64, 128, 256 channels with 1, 2,
  # 3, 3, 3 convolutions; 2x2x2 stride-2 down convolutions doubling the
  # channels; decoder stages of 256, 128, 64, 32 channels with 3, 3, 2, 1
  # convolutions, each after a 2x2x2 stride-2 transposed convolution to
  # half of them concatenated with the skip; a 1x1x1 head. No norm, so
  # every convolution has a bias. Counted abstractly (no weights).
  #
  # Hand count, 5^3 conv = 125 * c * c' + c', 2^3 conv = 8 * c * c' + c':
  #   encoder   1->16: 2,016                 down 16->32: 4,128
  #             2 x 32->32: 256,064          down 32->64: 16,448
  #             3 x 64->64: 1,536,192        down 64->128: 65,664
  #             3 x 128->128: 6,144,384      down 128->256: 262,400
  #             3 x 256->256: 24,576,768
  #   encoder total 32,864,064
  #   decoder   up 256->128: 262,272   3 x 256->256: 24,576,768
  #             up 256->64:  131,136   3 x 128->128:  6,144,384
  #             up 128->32:   32,800   2 x 64->64:    1,024,128
  #             up 64->16:     8,208   1 x 32->32:      128,032
  #             head 32->2: 66
  #   decoder total 32,307,794; convolutions 65,171,858.
  #   PReLU, one slope per channel per convolution (incl. strided ones):
  #     encoder 16 + 32 + 2*32 + 64 + 3*64 + 128 + 3*128 + 256 + 3*256
  #     = 1,904; decoder 128 + 3*256 + 64 + 3*128 + 32 + 2*64 + 16 + 32
  #     = 1,552; together 3,456.
  #   total 65,175,314.
  # The paper gives no count. The ~45.6M often quoted is for
  # github.com/mattmacy/vnet.pytorch (45,600,316 by the same arithmetic):
  # its stages have 1, 1, 2, 3, 2 (encoder) and 2, 2, 1, 1 (decoder)
  # convolutions, following the authors' prototxt rather than Fig. 2, plus
  # batch norm, ELUs and a 5x5x5 convolution before the head, so it is a
  # different network and is not matched here.
  model = VNet(num_classes=2, in_channels=1)
  assert model.spatial_dims == 3 and model.norm == "none"
  variables, _ = model_testing.abstract(model, (1, 16, 16, 16, 1))
  assert model_testing.num_params(variables["params"]) == 65_175_314
