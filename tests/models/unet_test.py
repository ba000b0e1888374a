"""Tests for medseg_jax.models.unet."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from medseg_jax.models import layers
from medseg_jax.models.unet import UNet
from tests.models import model_testing

# Tiny shapes keep compile times low: two levels, 4 and 8 channels.
FEATURES = (4, 8)
SHAPES = {2: (2, 16, 16, 1), 3: (2, 8, 8, 8, 1)}
# Compile time dominates these tests, so XLA optimisations are switched off
# for the jitted calls.


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_shape_and_dtype(spatial_dims, dtype):
  model = UNet(
    num_classes=3, features=FEATURES, spatial_dims=spatial_dims, dtype=dtype
  )
  variables, logits = model_testing.abstract(model, SHAPES[spatial_dims])
  model_testing.assert_logits(logits, SHAPES[spatial_dims], 3)
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("norm", layers.NORMS)
def test_each_norm(norm):
  model = UNet(num_classes=2, features=FEATURES, norm=norm)
  variables, x = model_testing.init(model, SHAPES[2])
  assert set(variables) == (
    {"params", "batch_stats"} if norm == "batch" else {"params"}
  )
  logits, updates = model_testing.apply(
    model, variables, x, train=True, mutable=["batch_stats"]
  )
  assert logits.shape == (2, 16, 16, 2)
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert set(updates) == ({"batch_stats"} if norm == "batch" else set())
  conv = variables["params"]["down_0"]["conv_0"]
  # A bias before a learned shift is redundant: only norm="none" has one.
  assert ("bias" in conv) == (norm == "none")


def _group_norm(x, groups, scale, bias, eps=1e-5):
  """Reference group norm in numpy: statistics per example over the spatial
  axes and the channels of each of `groups` contiguous channel groups."""
  x = np.asarray(x, np.float64)
  grouped = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
  axes = (*range(1, x.ndim - 1), x.ndim)  # Spatial axes and within-group.
  mean = grouped.mean(axis=axes, keepdims=True)
  var = grouped.var(axis=axes, keepdims=True)
  normed = ((grouped - mean) / np.sqrt(var + eps)).reshape(x.shape)
  return normed * scale + bias


def test_group_norm_uses_divisor_of_channels():
  # 12 channels: gcd(12, 32) = 4 groups of 3 channels; 64 channels: 32
  # groups of 2. Each norm's output is recomputed from its input (the conv
  # before it) with that many groups; 1 group or one per channel differs.
  model = UNet(num_classes=2, features=(12, 64), norm="group")
  variables, x = model_testing.init(model, SHAPES[2])
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map_with_path(
    lambda path, v: (
      jnp.asarray(rng.normal(1.0, 0.3, v.shape), v.dtype)
      if path[-1].key in ("scale", "bias")
      else v
    ),
    variables["params"],
  )
  _, state = model_testing.jit(
    lambda p, x: model.apply(
      {"params": p}, x, train=False, capture_intermediates=True
    )
  )(params, x)
  captured = state["intermediates"]
  for level, groups in (("down_0", 4), ("bottleneck", 32)):
    block = captured[level]
    conv_out = block["conv_0"]["__call__"][0]
    norm_out = block["norm_0"]["__call__"][0]
    norm_params = params[level]["norm_0"]
    reference = functools.partial(
      _group_norm, scale=norm_params["scale"], bias=norm_params["bias"]
    )
    np.testing.assert_allclose(
      norm_out, reference(conv_out, groups), rtol=1e-4, atol=1e-4
    )
    for wrong in (1, conv_out.shape[-1]):
      assert not np.allclose(norm_out, reference(conv_out, wrong), atol=1e-2)


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
    variables, logits = model_testing.abstract(model, shape)
    assert logits.shape == shape[:-1] + (2,)
    counts[mode] = model_testing.num_params(variables["params"])
  # 8 -> 4 channels: transpose has a 2^d kernel, resize a 1^d kernel.
  assert counts["transpose"] - counts["resize"] == (2**d - 1) * 8 * 4


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_gradients_finite(norm):
  model = UNet(num_classes=3, features=FEATURES, norm=norm)
  variables, x = model_testing.init(model, SHAPES[2])
  grads, _ = model_testing.train_gradients(model, variables, x, 3)
  model_testing.assert_finite(grads, nonzero=True)


@pytest.mark.slow
@pytest.mark.parametrize("upsample", layers.UPSAMPLE_MODES)
def test_jit_equals_eager(upsample):
  model = UNet(num_classes=2, features=FEATURES, upsample=upsample)
  # Also checks Flax's initialisers against the model once.
  variables, x = model_testing.init(model, SHAPES[2], real_init=True)
  eager = model.apply(variables, x, train=False)
  # Fully optimised compile, unlike the other tests.
  jitted = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_batch_stats_updated_only_in_training():
  model = UNet(num_classes=2, features=FEATURES, norm="batch")
  variables, x = model_testing.init(model, SHAPES[2])
  x = 3.0 * x + 1.0  # Away from the initial statistics (mean 0, var 1).

  _, updates = model_testing.apply(
    model, variables, x, train=True, mutable=["batch_stats"]
  )
  model_testing.assert_all_changed(
    variables["batch_stats"], updates["batch_stats"]
  )

  _, updates = model_testing.apply(
    model, variables, x, train=False, mutable=["batch_stats"]
  )
  jax.tree.map(
    np.testing.assert_array_equal,
    variables["batch_stats"],
    updates["batch_stats"],
  )
  # Eval mode uses running averages: one example's logits do not depend on
  # the rest of the batch.
  alone = model_testing.apply(model, variables, x[:1], train=False)
  together = model_testing.apply(model, variables, x, train=False)[:1]
  np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)


def test_batch_norm_with_sharded_batch(eight_devices):
  # The batch is split over the 8 fake devices: the sharded, jitted result
  # must equal the single-device one, i.e. the statistics are over the
  # global batch, not per device.
  mesh = Mesh(np.array(eight_devices), ("data",))
  model = UNet(num_classes=2, features=FEATURES, norm="batch")
  batch = 2 * len(eight_devices)
  variables, x = model_testing.init(model, (batch, 16, 16, 1))
  x = x + jnp.arange(batch).reshape(-1, 1, 1, 1)  # Shards differ in mean.

  def step(v, x):
    return model.apply(v, x, train=True, mutable=["batch_stats"])

  expected = model_testing.jit(step)(variables, x)
  x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
  assert {s.data.shape for s in x_sharded.addressable_shards} == {
    (2, 16, 16, 1)
  }
  assert len({s.device for s in x_sharded.addressable_shards}) == 8
  jitted = model_testing.jit(step)
  got = jitted(variables, x_sharded)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
    got,
    expected,
  )
  # The activations stay split too: each device convolves its own two
  # examples' full-resolution features (4 channels), no device holds the
  # whole batch's, and the statistics are summed across devices.
  logits = got[0]
  assert {s.data.shape for s in logits.addressable_shards} == {(2, 16, 16, 2)}
  compiled = jitted.lower(variables, x_sharded).compile().as_text()
  assert "f32[2,16,16,4]" in compiled
  assert f"f32[{batch},16,16,4]" not in compiled
  assert "all-reduce" in compiled


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
  assert "pad_input=True" in str(info.value)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pad_input_crops_back(spatial_dims):
  shape = (1, 10, 7, 1) if spatial_dims == 2 else (1, 5, 10, 7, 1)
  model = UNet(
    num_classes=2,
    features=(4, 8, 16),
    spatial_dims=spatial_dims,
    pad_input=True,
    deep_supervision=True,
  )
  _, (logits, state) = model_testing.abstract(
    model, shape, mutable=["aux_logits"]
  )
  assert logits.shape == shape[:-1] + (2,)
  # Level 1 of sizes S is ceil(S / 2).
  (aux,) = state["aux_logits"]["deep_supervision"]
  expected = (1, 5, 4, 2) if spatial_dims == 2 else (1, 3, 5, 4, 2)
  assert aux.shape == expected
  # Rank and channel errors are unaffected by padding.
  with pytest.raises(ValueError, match="dims"):
    model_testing.abstract(model, shape[1:])


def test_pad_input_matches_manual_padding():
  model = UNet(
    num_classes=2, features=FEATURES, norm="instance", pad_input=True
  )
  variables, x = model_testing.init(model, (1, 13, 11, 1))
  got = model_testing.apply(model, variables, x, train=False)
  # Zeros at the end, to the next multiple of 2.
  padded = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  expected = model_testing.apply(model, variables, padded, train=False)[
    :, :13, :11
  ]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"norm": "layer"}, "norm"),
    ({"upsample": "pixelshuffle"}, "upsample"),
    ({"spatial_dims": 1}, "spatial_dims"),
    ({"features": ()}, "features"),
    ({"features": (4, 8), "deep_supervision": True}, "3 levels"),
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
  shapes = model_testing.abstract_variables(model, (1, 32, 32, 1))
  assert set(shapes) == {"params"}
  assert model_testing.num_params(shapes["params"]) == 31_030_658


# --- Options: residual blocks, deep supervision, Cicek channel layout. ---

# Three levels: the smallest U-Net with a decoder level below full
# resolution (deep supervision needs one). Sizes multiples of 4.
FEATURES3 = (4, 8, 16)
SHAPES3 = {2: (2, 8, 8, 1), 3: (1, 8, 4, 8, 1)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deep_supervision_sows_lowres_logits_finest_first(spatial_dims):
  shape = (2, 16, 8, 1) if spatial_dims == 2 else (1, 16, 8, 8, 1)
  model = UNet(
    num_classes=3,
    features=(4, 8, 16, 32),
    spatial_dims=spatial_dims,
    deep_supervision=True,
  )
  variables, (logits, state) = model_testing.abstract(
    model, shape, mutable=["batch_stats", "aux_logits"], train=True
  )
  # init sows nothing, so its variables can be passed straight to apply.
  assert set(variables) == {"params", "batch_stats"}
  assert {"aux_head_1", "aux_head_2"} <= set(variables["params"])
  assert "aux_head_0" not in variables["params"]
  assert logits.shape == shape[:-1] + (3,)
  aux = state["aux_logits"]["deep_supervision"]
  assert isinstance(aux, tuple)
  spatial = shape[1:-1]
  assert [a.shape for a in aux] == [
    (shape[0], *(s // 2**k for s in spatial), 3) for k in (1, 2)
  ]
  assert all(a.dtype == jnp.float32 for a in aux)
  # Not collected, not computed: the plain trainer's call is unchanged.
  _, (_, state) = model_testing.abstract(
    model, shape, mutable=["batch_stats"], train=True
  )
  assert set(state) == {"batch_stats"}


def test_deep_supervision_heads_skipped_unless_collected():
  model = UNet(num_classes=2, features=FEATURES3, deep_supervision=True)
  x = jax.ShapeDtypeStruct(SHAPES3[2], jnp.float32)
  variables = model_testing.abstract_variables(model, x.shape)

  def num_convs(mutable):
    jaxpr = jax.make_jaxpr(
      lambda v, x: model.apply(v, x, train=False, mutable=mutable)
    )(variables, x)
    return str(jaxpr).count("conv_general_dilated")

  assert num_convs(["aux_logits"]) == num_convs(False) + 1


@pytest.mark.slow
@pytest.mark.parametrize("norm", layers.NORMS)
def test_options_with_each_norm(norm):
  # Every option at once, run for real in training mode.
  model = UNet(
    num_classes=3,
    features=FEATURES3,
    norm=norm,
    residual=True,
    deep_supervision=True,
    double_within_level=True,
  )
  variables, x = model_testing.init(model, SHAPES3[2])
  assert set(variables) == (
    {"params", "batch_stats"} if norm == "batch" else {"params"}
  )
  logits, state = model_testing.apply(
    model, variables, x, train=True, mutable=["batch_stats", "aux_logits"]
  )
  assert logits.shape == (2, 8, 8, 3)
  (aux,) = state["aux_logits"]["deep_supervision"]
  assert aux.shape == (2, 4, 4, 3)
  for out in (logits, aux):
    assert bool(jnp.all(jnp.isfinite(out)))
  assert ("batch_stats" in state) == (norm == "batch")


@pytest.mark.slow
def test_residual_and_deep_supervision_gradients():
  # norm="none" keeps the backward pass small; norms are covered above.
  model = UNet(
    num_classes=3,
    features=FEATURES3,
    norm="none",
    residual=True,
    deep_supervision=True,
  )
  variables, x = model_testing.init(model, SHAPES3[2])
  labels = jax.random.randint(jax.random.key(2), SHAPES3[2][:-1], 0, 3)

  def loss_fn(params):
    logits, state = model.apply(
      {**variables, "params": params},
      x,
      train=True,
      mutable=["batch_stats", "aux_logits"],
    )
    (aux,) = state["aux_logits"]["deep_supervision"]
    # Nearest-neighbour downsampled labels for the half-resolution head.
    xent = model_testing.cross_entropy
    return xent(logits, labels, 3) + 0.5 * xent(aux, labels[:, ::2, ::2], 3)

  grads = model_testing.jit(jax.grad(loss_fn))(variables["params"])
  model_testing.assert_finite(grads, nonzero=True)
  assert "shortcut" in grads["down_0"]  # 1 -> 4 channels: a projection.


def test_residual_block_param_names():
  model = UNet(num_classes=2, features=FEATURES, residual=True, norm="batch")
  variables, _ = model_testing.abstract(model, SHAPES[2])
  params = variables["params"]
  # A projection wherever the channels change: 1->4, 4->8, [4+4]->4.
  for name in ("down_0", "bottleneck", "up_0"):
    assert {"shortcut", "shortcut_norm"} <= set(params[name])
  # ConvBlock's names are kept for the two convolutions.
  assert {"conv_0", "conv_1", "norm_0", "norm_1"} <= set(params["down_0"])
  plain, _ = model_testing.abstract(
    UNet(num_classes=2, features=FEATURES), SHAPES[2]
  )
  extra = model_testing.num_params(params) - model_testing.num_params(
    plain["params"]
  )
  # Shortcut kernels (no bias before batch norm) plus scale and offset.
  assert extra == (1 * 4 + 2 * 4) + (4 * 8 + 2 * 8) + (8 * 4 + 2 * 4)


def test_double_within_level_channels():
  model = UNet(
    num_classes=2,
    features=FEATURES3,
    double_within_level=True,
    norm="none",
    spatial_dims=3,
  )
  variables, logits = model_testing.abstract(model, SHAPES3[3])
  assert logits.shape == SHAPES3[3][:-1] + (2,)
  kernels = {
    name: tuple(p["conv_0"]["kernel"].shape[-2:])
    + tuple(p["conv_1"]["kernel"].shape[-1:])
    for name, p in variables["params"].items()
    if "conv_0" in p
  }
  # (in, first conv, second conv): the encoder doubles within the level,
  # the decoder keeps 2 * features[k].
  assert kernels == {
    "down_0": (1, 4, 8),
    "down_1": (8, 8, 16),
    "bottleneck": (16, 16, 32),
    "up_1": (32 + 16, 16, 16),
    "up_0": (16 + 8, 8, 8),
  }
  # The up-convolution keeps its input's channels.
  kernel = variables["params"]["upsample_1"]["conv_transpose"]["kernel"]
  assert kernel.shape == (2, 2, 2, 32, 32)


@pytest.mark.parametrize(
  "norm, expected", [("none", 19_070_851), ("batch", 19_073_187)]
)
def test_cicek_3d_unet_parameter_count(norm, expected):
  # Cicek et al. (2016), "3D U-Net: Learning Dense Volumetric Segmentation
  # from Sparse Annotation", Sec. 2 and Fig. 2: 3 input channels, 3 labels,
  # 3x3x3 convolutions, channels doubled before each max pooling, 2x2x2
  # up-convolutions with stride 2, batch norm before each ReLU, a 1x1x1
  # head. The paper states "The architecture has 19069955 parameters".
  #
  # Hand count, 3^3 conv = 27 * c_in * c_out + c_out (bias):
  #   analysis    3->32: 2,624          32->64: 55,360
  #              64->64: 110,656        64->128: 221,312
  #            128->128: 442,496       128->256: 884,992
  #            256->256: 1,769,728     256->512: 3,539,456
  #   analysis total 7,026,624
  #   synthesis, up-conv 2^3 = 8 * c * c + c (keeps channels), then two
  #   3^3 convs on the concatenation:
  #     512: 2,097,664 + (768->256) 5,308,672 + (256->256) 1,769,728
  #     256:   524,544 + (384->128) 1,327,232 + (128->128)   442,496
  #     128:   131,200 + (192->64)    331,840 + (64->64)     110,656
  #   head 64->3: 195
  #   synthesis total 12,044,227; sum 19,070,851 (norm="none").
  # The paper's 19,069,955 is exactly 896 = 512 + 256 + 128 less: the
  # biases of the three up-convolutions, which the authors' implementation
  # evidently did not have (and did not count batch-norm parameters).
  # With batch norm, the 18 convolutions before a norm lose their biases
  # (32+64+64+128+128+256+256+512 + 256+256+128+128+64+64 = 2,336) and each
  # norm has a scale and an offset (2 * 2,336):
  #   19,070,851 - 2,336 + 4,672 = 19,073,187.
  model = UNet(
    num_classes=3,
    features=(32, 64, 128, 256),
    spatial_dims=3,
    norm=norm,
    upsample="transpose",
    double_within_level=True,
    in_channels=3,
  )
  variables, _ = model_testing.abstract(model, (1, 8, 8, 8, 3))
  params = variables["params"]
  assert model_testing.num_params(params) == expected
  up_biases = sum(
    params[f"upsample_{k}"]["conv_transpose"]["bias"].size for k in range(3)
  )
  if norm == "none":
    assert model_testing.num_params(params) - up_biases == 19_069_955


@pytest.mark.slow
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_remat_keeps_parameters_and_gradients(spatial_dims):
  shape = SHAPES[spatial_dims]
  kwargs = dict(
    num_classes=3, features=FEATURES, spatial_dims=spatial_dims, norm="batch"
  )
  plain, remat = UNet(**kwargs), UNet(**kwargs, remat=True)
  variables, x = model_testing.init(plain, shape)
  assert jax.tree.structure(
    model_testing.abstract_variables(remat, shape)
  ) == jax.tree.structure(variables)
  expected = model_testing.train_gradients(plain, variables, x, 3)
  got = model_testing.train_gradients(remat, variables, x, 3)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    got,
    expected,
  )

  # The backward pass really recomputes: a remat (checkpoint) per block.
  def loss(params, model):
    logits, _ = model.apply(
      {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
    )
    return jnp.sum(logits)

  jaxprs = [
    str(
      jax.make_jaxpr(jax.grad(loss), static_argnums=1)(variables["params"], m)
    )
    for m in (plain, remat)
  ]
  assert "remat" not in jaxprs[0] and "checkpoint" not in jaxprs[0]
  assert jaxprs[1].count("checkpoint") + jaxprs[1].count("remat") >= 3


@pytest.mark.slow
def test_bfloat16_gradients_are_close_to_float32():
  kwargs = dict(num_classes=3, features=FEATURES, norm="instance")
  f32, bf16 = UNet(**kwargs), UNet(**kwargs, dtype=jnp.bfloat16)
  variables, x = model_testing.init(f32, SHAPES[2])
  logits = model_testing.apply(bf16, variables, x, train=False)
  assert logits.dtype == jnp.float32  # The head runs in float32.
  expected, _ = model_testing.train_gradients(f32, variables, x, 3)
  got, _ = model_testing.train_gradients(bf16, variables, x, 3)
  for leaf in jax.tree.leaves(got):
    assert leaf.dtype == jnp.float32  # Float32 parameters and gradients.
  a, b = (
    jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(tree)])
    for tree in (got, expected)
  )
  # bfloat16 keeps 8 bits of mantissa; these random-label gradients are
  # small differences of large terms, so agreement is ~10 %, not 1e-3 (a
  # float16 or broken cast would be far off).
  cosine = float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
  assert cosine > 0.98
  assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 0.2
  # ... and bfloat16 really was used: the gradients are not the float32 ones.
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(
      jax.tree.leaves(got), jax.tree.leaves(expected), strict=True
    )
  )
