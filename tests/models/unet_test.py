"""Tests for medseg_jax.models.unet."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from medseg_jax.models import layers
from medseg_jax.models.unet import UNet

# Tiny shapes keep compile times low: two levels, 4 and 8 channels.
FEATURES = (4, 8)
SHAPES = {2: (2, 16, 16, 1), 3: (2, 8, 8, 8, 1)}
# Compile time dominates these tests (initialisers are 3 s to optimise,
# 0.5 s not), so XLA optimisations are switched off for the jitted calls.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _jit(fn):
  return jax.jit(fn, compiler_options=FAST_COMPILE)


def _init(model: nn.Module, shape, key=0):
  x = jax.random.normal(jax.random.key(key), shape)
  variables = _jit(lambda k, x: model.init(k, x, train=False))(
    jax.random.key(1), x
  )
  return variables, x


def _apply(model: nn.Module, variables, x, **kwargs):
  return _jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def _num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_shape_and_dtype(spatial_dims, dtype):
  model = UNet(
    num_classes=3, features=FEATURES, spatial_dims=spatial_dims, dtype=dtype
  )
  variables, x = _init(model, SHAPES[spatial_dims])
  logits = _apply(model, variables, x, train=False)
  assert logits.shape == SHAPES[spatial_dims][:-1] + (3,)
  assert logits.dtype == jnp.float32
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("norm", layers.NORMS)
def test_each_norm(norm):
  model = UNet(num_classes=2, features=FEATURES, norm=norm)
  variables, x = _init(model, SHAPES[2])
  assert set(variables) == (
    {"params", "batch_stats"} if norm == "batch" else {"params"}
  )
  logits, updates = _apply(
    model, variables, x, train=True, mutable=["batch_stats"]
  )
  assert logits.shape == (2, 16, 16, 2)
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert set(updates) == ({"batch_stats"} if norm == "batch" else set())
  conv = variables["params"]["down_0"]["conv_0"]
  # A bias before a learned shift is redundant: only norm="none" has one.
  assert ("bias" in conv) == (norm == "none")


def test_group_norm_uses_divisor_of_channels():
  # 12 channels: gcd(12, 32) = 4 groups of 3 channels.
  model = UNet(num_classes=2, features=(12, 24), norm="group")
  variables, x = _init(model, SHAPES[2])
  assert _apply(model, variables, x, train=False).shape == (2, 16, 16, 2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_upsample_modes(spatial_dims):
  d = spatial_dims
  shape = (1, 16, 8, 1) if d == 2 else (1, 8, 4, 8, 1)  # Non-cubic too.
  counts = {}
  for mode in layers.UPSAMPLE_MODES:
    model = UNet(
      num_classes=2,
      features=FEATURES,
      spatial_dims=d,
      norm="none",
      upsample=mode,
    )
    variables, x = _init(model, shape)
    assert _apply(model, variables, x, train=False).shape == shape[:-1] + (2,)
    counts[mode] = _num_params(variables["params"])
  # 8 -> 4 channels: transpose has a 2^d kernel, resize a 1^d kernel.
  assert counts["transpose"] - counts["resize"] == (2**d - 1) * 8 * 4


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_up_conv_transpose_equals_flax_conv_transpose(spatial_dims):
  d = spatial_dims
  x = jax.random.normal(jax.random.key(0), (2, *(3, 4, 5)[:d], 6))
  ours = layers.UpConvTranspose(7, spatial_dims=d)
  flax_tconv = nn.ConvTranspose(
    7, (2,) * d, strides=(2,) * d, padding="VALID", kernel_init=layers.conv_init
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


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_gradients_finite(norm):
  model = UNet(num_classes=3, features=FEATURES, norm=norm)
  variables, x = _init(model, SHAPES[2])
  labels = jax.random.randint(jax.random.key(2), (2, 16, 16), 0, 3)

  def loss_fn(params):
    logits, _ = model.apply(
      {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
    )
    one_hot = jax.nn.one_hot(labels, 3)
    return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), -1))

  grads = _jit(jax.grad(loss_fn))(variables["params"])
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert all(bool(jnp.any(g != 0)) for g in leaves)


@pytest.mark.parametrize("upsample", layers.UPSAMPLE_MODES)
def test_jit_equals_eager(upsample):
  model = UNet(num_classes=2, features=FEATURES, upsample=upsample)
  variables, x = _init(model, SHAPES[2])
  eager = model.apply(variables, x, train=False)
  # Fully optimised compile, unlike the other tests.
  jitted = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)


def test_batch_stats_updated_only_in_training():
  model = UNet(num_classes=2, features=FEATURES, norm="batch")
  variables, x = _init(model, SHAPES[2])
  x = 3.0 * x + 1.0  # Away from the initial statistics (mean 0, var 1).

  _, updates = _apply(model, variables, x, train=True, mutable=["batch_stats"])
  changed = jax.tree.map(
    lambda a, b: bool(jnp.any(a != b)),
    variables["batch_stats"],
    updates["batch_stats"],
  )
  assert all(jax.tree.leaves(changed))

  _, updates = _apply(model, variables, x, train=False, mutable=["batch_stats"])
  jax.tree.map(
    np.testing.assert_array_equal,
    variables["batch_stats"],
    updates["batch_stats"],
  )
  # Eval mode uses running averages: one example's logits do not depend on
  # the rest of the batch.
  alone = _apply(model, variables, x[:1], train=False)
  together = _apply(model, variables, x, train=False)[:1]
  np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)


def test_batch_norm_with_sharded_batch():
  # Uses every available device (one on a plain CPU run, more with
  # --xla_force_host_platform_device_count): the sharded, jitted result must
  # equal the single-device one, i.e. statistics are over the global batch.
  devices = np.array(jax.devices())
  mesh = Mesh(devices, ("data",))
  model = UNet(num_classes=2, features=FEATURES, norm="batch")
  batch = 2 * len(devices)
  variables, x = _init(model, (batch, 16, 16, 1))

  def step(v, x):
    return model.apply(v, x, train=True, mutable=["batch_stats"])

  expected = _jit(step)(variables, x)
  x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
  got = _jit(step)(variables, x_sharded)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
    got,
    expected,
  )


def test_wrong_ndim_raises():
  model = UNet(num_classes=2, features=FEATURES)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    model.init(jax.random.key(0), jnp.zeros((16, 16, 1)), train=False)
  model3d = UNet(num_classes=2, features=FEATURES, spatial_dims=3)
  with pytest.raises(ValueError, match=r"\[B, D, H, W, C\]"):
    model3d.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)


def test_wrong_channels_raises():
  model = UNet(num_classes=2, features=FEATURES, in_channels=3)
  with pytest.raises(ValueError, match="3 input channels"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)


def test_indivisible_size_raises():
  model = UNet(num_classes=2, features=(4, 8, 16, 32, 64))
  with pytest.raises(ValueError, match="multiples of 16") as info:
    model.init(jax.random.key(0), jnp.zeros((1, 40, 32, 1)), train=False)
  assert "(48, 32)" in str(info.value)  # Suggests a padded size.


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"norm": "layer"}, "norm"),
    ({"upsample": "pixelshuffle"}, "upsample"),
    ({"spatial_dims": 1}, "spatial_dims"),
    ({"features": ()}, "features"),
  ],
)
def test_bad_config_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    UNet(num_classes=2, **kwargs)


def test_paper_parameter_count():
  # Ronneberger et al. (2015), Fig. 1: 1 input channel, 2 classes, features
  # 64..1024, no normalisation, 2x2 up-convolutions. Counted abstractly with
  # eval_shape (no weights allocated); padding does not change the count, so
  # 'SAME' here and the paper's 'valid' agree.
  #
  # Hand count, 3x3 conv = 9 * c_in * c_out + c_out (bias):
  #   encoder      1->64: 640        64->64: 36,928
  #               64->128: 73,856   128->128: 147,584
  #              128->256: 295,168  256->256: 590,080
  #              256->512: 1,180,160 512->512: 2,359,808
  #   bottleneck 512->1024: 4,719,616 1024->1024: 9,438,208
  #   encoder total 18,842,048
  #   decoder, up-conv 2x2 = 4 * c_in * c_out + c_out, then two 3x3 convs on
  #   the concatenation [skip, up]:
  #     1024->512: 2,097,664 + 4,719,104 + 2,359,808 = 9,176,576
  #      512->256:   524,544 + 1,179,904 +   590,080 = 2,294,528
  #      256->128:   131,200 +   295,040 +   147,584 =   573,824
  #      128->64:     32,832 +    73,792 +    36,928 =   143,552
  #   head 1x1, 64->2: 130
  #   total 18,842,048 + 12,188,480 + 130 = 31,030,658.
  #
  # The often quoted 31,031,685 is the Keras model of github.com/zhixuhao/unet
  # (model.py): identical up to the last 64-channel conv, but its head is a
  # 3x3 conv to 2 channels (1,154) plus a 1x1 conv to 1 sigmoid channel (3)
  # instead of the paper's single 1x1 conv to 2 classes (130):
  # 31,030,658 - 130 + 1,157 = 31,031,685.
  model = UNet(
    num_classes=2,
    features=(64, 128, 256, 512, 1024),
    norm="none",
    upsample="transpose",
    in_channels=1,
  )
  x = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
  shapes = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), x
  )
  assert set(shapes) == {"params"}
  assert _num_params(shapes["params"]) == 31_030_658
