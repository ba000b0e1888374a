"""Tests for medseg_jax.models.mednext and UpKern (transfer.upkern_kernel)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax import transfer
from medseg_jax.models import mednext
from medseg_jax.models.mednext import DepthwiseConv
from medseg_jax.models.mednext import MedNeXt
from tests.models import model_testing

# Three levels, one block everywhere, base width 4.
TINY = {"base_features": 4, "expansion": (2,) * 5, "blocks": (1,) * 5}

# Our counts (1 input channel, 2 classes, deep supervision), 3-D kernel 3,
# 3-D kernel 5 and 2-D kernel 3. The paper's Table 1 (kernel 3) gives
# 5.6 M, 10.5 M, 17.6 M and 61.8 M: the authors' module has one more
# parameter (a `dummy_tensor` for PyTorch checkpointing).
COUNTS = {
  "S": (5_552_842, 5_982_474, 5_473_930),
  "B": (10_528_234, 10_957_866, 10_449_322),
  "M": (17_550_890, 18_262_762, 17_420_138),
  "L": (61_781_194, 62_994_826, 61_558_282),
}
PAPER_MILLIONS = {"S": 5.6, "B": 10.5, "M": 17.6, "L": 61.8}
# MONAI 1.6.1 `create_mednext(size, spatial_dims=3, in_channels=1,
# out_channels=2, kernel_size=3, deep_supervision=True)`, counted with
# sum(p.numel() for p in model.parameters()).
MONAI_3D_K3 = {
  "S": 5_552_842,
  "B": 10_512_778,
  "M": 17_535_434,
  "L": 61_728_682,
}


def _count(size, spatial_dims, kernel_size):
  model = MedNeXt(
    num_classes=2,
    spatial_dims=spatial_dims,
    size=size,
    kernel_size=kernel_size,
    deep_supervision=True,
  )
  shape = (1, *(16,) * spatial_dims, 1)
  return model_testing.num_params(
    model_testing.abstract_variables(model, shape)
  )


@pytest.mark.parametrize(
  "size",
  ["S", *(pytest.param(s, marks=pytest.mark.slow) for s in "BML")],
)
def test_sizes_match_paper_and_monai_in_3d(size):
  count = _count(size, 3, 3)
  assert count == COUNTS[size][0]
  assert round(count / 1e6, 1) == PAPER_MILLIONS[size]
  # MONAI's first two down blocks expand by the ratio of the level they
  # leave; each unit of ratio at width C costs 3 C^2 + C parameters.
  ratios = mednext.SIZES[size][0]
  gap = sum(
    (ratios[level] - ratios[level - 1]) * (3 * c * c + c)
    for level, c in ((1, 32), (2, 64), (3, 128), (4, 256))
  )
  assert count - MONAI_3D_K3[size] == gap


@pytest.mark.slow
@pytest.mark.parametrize("size", sorted(mednext.SIZES))
def test_sizes_build_abstractly_kernel5_and_2d(size):
  assert _count(size, 3, 5) == COUNTS[size][1]
  assert _count(size, 2, 3) == COUNTS[size][2]


def test_layout_and_expansion_ratios():
  model = MedNeXt(num_classes=3, size="B", base_features=4)
  variables, _ = model_testing.abstract(model, (1, 16, 16, 1))
  params = variables["params"]
  # The down block into level 1 expands by level 1's ratio (3), as the
  # authors' code; the up block into level 3 by decoder entry 5 (4).
  assert params["down_1"]["expand"]["kernel"].shape == (4, 3 * 4)
  assert params["down_1"]["compress"]["kernel"].shape == (12, 8)
  assert params["enc_0_0"]["expand"]["kernel"].shape == (4, 2 * 4)
  assert params["up_3"]["expand"]["kernel"].shape == (64, 4 * 64)
  assert params["up_0"]["compress"]["kernel"].shape == (2 * 8, 4)
  assert params["enc_2_1"]["depthwise"]["kernel"].shape == (3, 3, 1, 16)
  assert params["stem"]["kernel"].shape == (1, 4)
  assert sum(k.startswith("dec_") for k in params) == 8


def test_scatter_odd_matches_numpy():
  y = np.arange(2 * 3 * 2 * 5, dtype=np.float32).reshape(2, 3, 2, 5)
  expected = np.zeros((2, 6, 4, 5), np.float32)
  expected[:, 1::2, 1::2] = y
  np.testing.assert_array_equal(
    mednext._scatter_odd(jnp.asarray(y), 2), expected
  )


@pytest.mark.slow
def test_depthwise_down_and_up_match_torch():
  torch = pytest.importorskip("torch")
  c, k = 3, 3
  x = np.random.default_rng(0).standard_normal((2, 6, 8, c), np.float32)
  kernel = np.random.default_rng(1).standard_normal((k, k, 1, c), np.float32)
  variables = {"params": {"kernel": kernel, "bias": np.zeros(c, np.float32)}}
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)
  wt = torch.from_numpy(kernel).permute(3, 2, 0, 1)  # [C, 1, k, k]
  down = DepthwiseConv(k, mode="down").apply(variables, x)
  ref = torch.nn.functional.conv2d(xt, wt, stride=2, padding=1, groups=c)
  np.testing.assert_allclose(down, ref.permute(0, 2, 3, 1), atol=1e-5)
  # The authors' upsampling: transposed conv (2S - 1) then a zero row and
  # column in front. Ours equals it with the kernel flipped, except that
  # our first row and column are computed.
  up = DepthwiseConv(k, mode="up").apply(variables, x)
  assert up.shape == (2, 12, 16, c)
  ref = torch.nn.functional.conv_transpose2d(
    xt, torch.flip(wt, (2, 3)), stride=2, padding=1, groups=c
  )
  ref = torch.nn.functional.pad(ref, (1, 0, 1, 0)).permute(0, 2, 3, 1)
  np.testing.assert_allclose(up[:, 1:, 1:], ref[:, 1:, 1:], atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deep_supervision_heads_have_the_expected_scales(spatial_dims):
  model = MedNeXt(
    num_classes=2, spatial_dims=spatial_dims, deep_supervision=True, **TINY
  )
  shape = (1, *(8,) * spatial_dims, 1)
  variables, (logits, state) = model_testing.abstract(
    model, shape, mutable=["aux_logits"], train=True
  )
  model_testing.assert_logits(logits, shape, 2)
  aux = state["aux_logits"]["deep_supervision"]
  # Levels 1 and 2; level 2 is the bottleneck (the authors' out_4).
  assert [a.shape for a in aux] == [
    (1, *(4,) * spatial_dims, 2),
    (1, *(2,) * spatial_dims, 2),
  ]


@pytest.mark.parametrize(
  "spatial_dims", [2, pytest.param(3, marks=pytest.mark.slow)]
)
def test_tiny_model_trains_with_finite_gradients(spatial_dims):
  model = MedNeXt(
    num_classes=2,
    spatial_dims=spatial_dims,
    base_features=2,
    expansion=(2, 2, 2),
    blocks=(1, 1, 1),
  )
  shape = (2, *(4,) * spatial_dims, 1)
  variables, x = model_testing.init(model, shape)
  grads, _ = model_testing.train_gradients(model, variables, x, 2)
  model_testing.assert_finite(grads)
  # A depthwise bias is followed by a one-group-per-channel norm, which
  # removes it: its gradient is zero up to rounding. Every other is not.
  flat = flax.traverse_util.flatten_dict(grads, sep="/")
  for name, grad in flat.items():
    if name.endswith("depthwise/bias"):
      np.testing.assert_allclose(grad, 0, atol=1e-5, err_msg=name)
    else:
      assert bool(jnp.any(grad != 0)), name


def test_rejects_bad_arguments():
  with pytest.raises(ValueError, match="size"):
    MedNeXt(num_classes=2, size="XL")
  with pytest.raises(ValueError, match="odd"):
    MedNeXt(num_classes=2, kernel_size=4)
  with pytest.raises(ValueError, match="2L - 1"):
    MedNeXt(num_classes=2, expansion=(2,) * 4, blocks=(1,) * 4)
  model_testing.assert_rejects(
    MedNeXt(num_classes=2, **TINY), [((1, 10, 8, 1), "multiples of 4")]
  )


# ---------------------------------------------------------------------------
# UpKern.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_upkern_matches_torch_interpolate(spatial_dims):
  torch = pytest.importorskip("torch")
  kernel = np.random.default_rng(0).standard_normal(
    (3,) * spatial_dims + (1, 4), np.float32
  )
  got = transfer.upkern_kernel(kernel, (5,) * spatial_dims + (1, 4))
  # The authors: interpolate(mode="trilinear") on [C_out, C_in, *K].
  source = torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).copy())
  mode = "trilinear" if spatial_dims == 3 else "bilinear"
  ref = torch.nn.functional.interpolate(
    source, size=(5,) * spatial_dims, mode=mode
  )
  ref = np.moveaxis(ref.numpy(), (0, 1), (-1, -2))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_upkern_is_not_centre_padding():
  # A delta 3-kernel (identity) becomes a smeared 5-kernel, not a delta.
  kernel = np.zeros((3, 3, 1, 1), np.float32)
  kernel[1, 1] = 1.0
  got = transfer.upkern_kernel(kernel, (5, 5, 1, 1))[..., 0, 0]
  assert got[2, 2] == pytest.approx(1.0)
  # Tap 1 samples the source at 0.6 - 0.2 = 0.4: weight 0.4 on the centre.
  assert got[1, 1] == pytest.approx(0.4 * 0.4)
  assert got[0, 0] == 0.0


@pytest.mark.slow
def test_init_from_kernel3_to_kernel5_reports_resized_kernels():
  x = jnp.zeros((1, 8, 8, 1))
  k3 = MedNeXt(num_classes=2, kernel_size=3, **TINY)
  k5 = MedNeXt(num_classes=2, kernel_size=5, **TINY)
  source, _ = model_testing.init(k3, x.shape, seed=1)
  target, _ = model_testing.init(k5, x.shape, seed=2)
  source, target = source["params"], target["params"]
  depthwise = [n for n in transfer.flatten(target) if "depthwise/kernel" in n]
  assert len(depthwise) == 9  # 3 encoder, 2 down, 2 up, 2 decoder.

  merged, report = transfer.merge(target, source)
  assert {n for n, _, _ in report.shape_mismatch} == set(depthwise)

  merged, report = transfer.merge(target, source, upkern=True)
  assert not report.reinitialised
  assert {n for n, _, _ in report.resized} == set(depthwise)
  assert "resized" in report.summary()
  flat, flat_source = transfer.flatten(merged), transfer.flatten(source)
  for name in depthwise:
    np.testing.assert_allclose(
      flat[name],
      transfer.upkern_kernel(flat_source[name], flat[name].shape),
    )
  np.testing.assert_array_equal(
    flat["enc_1_0/expand/kernel"], flat_source["enc_1_0/expand/kernel"]
  )
  # And the kernel-5 model runs with them.
  logits = model_testing.apply(k5, {"params": merged}, x, train=False)
  model_testing.assert_finite(logits)


@pytest.mark.long
@pytest.mark.parametrize(
  "spatial_dims, axes",
  [(2, {"data": 8}), (3, {"data": 2, "spatial": 4})],
  ids=["2d-data8", "3d-data2-spatial4"],
)
def test_sharded_equals_unsharded(spatial_dims, axes, eight_devices):
  def make(**kwargs):
    return MedNeXt(
      num_classes=2,
      spatial_dims=spatial_dims,
      base_features=2,
      expansion=(2, 2, 2),
      blocks=(1, 1, 1),
      **kwargs,
    )

  shape = (8, 8, 8, 1) if spatial_dims == 2 else (2, 8, 8, 8, 1)
  model_testing.assert_sharded_matches_unsharded(
    make, shape, eight_devices, axes
  )


def test_bfloat16_and_remat_keep_parameters_and_float32_logits():
  shape = (1, 8, 8, 1)
  plain, _ = model_testing.abstract(MedNeXt(num_classes=2, **TINY), shape)
  model = MedNeXt(num_classes=2, dtype=jnp.bfloat16, remat=True, **TINY)
  variables, logits = model_testing.abstract(model, shape)
  model_testing.assert_logits(logits, shape, 2)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == (
    jax.tree.map(lambda a: (a.shape, a.dtype), plain)
  )


@pytest.mark.parametrize(
  "kernel_size", [3, 5, pytest.param(7, marks=pytest.mark.long)]
)
@pytest.mark.parametrize("mode", ["same", "down", "up"])
@pytest.mark.parametrize(
  "spatial_dims", [2, pytest.param(3, marks=pytest.mark.slow)]
)
def test_depthwise_taps_equal_grouped_convolution(
  mode, spatial_dims, kernel_size
):
  shape = (2, *(6,) * spatial_dims, 3)
  x = jax.random.normal(jax.random.key(0), shape)
  models = {
    i: DepthwiseConv(kernel_size, spatial_dims, mode, impl=i)
    for i in ("xla", "taps")
  }
  variables = models["xla"].init(jax.random.key(1), x)
  variables = jax.tree.map(
    lambda a: jax.random.normal(jax.random.key(2), a.shape), variables
  )

  def run(impl):
    def loss(v, x):
      y = models[impl].apply(v, x)
      return jnp.sum(y * jnp.cos(y)), y

    return model_testing.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(
      variables, x
    )

  jax.tree.map(
    # 1e-4 for 3^d taps; float32 rounding grows with the number of taps.
    lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-4, atol=1e-4 * (kernel_size / 3) ** spatial_dims
    ),
    run("taps"),
    run("xla"),
  )
