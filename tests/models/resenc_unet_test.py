"""Tests for medseg_jax.models.resenc_unet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax.models import resenc_unet
from medseg_jax.models.resenc_unet import ResEncUNet
from medseg_jax.models.resenc_unet import ResidualBlockD
from tests.models import model_testing

TINY = {"features": (4, 8, 16), "blocks_per_stage": (1, 2, 1)}

# Parameter counts of dynamic-network-architectures' ResidualEncoderUNet
# (commit 42532901 of MIC-DKFZ/dynamic-network-architectures), built with
# nnU-Net's ResEnc plan arguments: 1 input channel, 2 classes, kernel 3,
# strides (1, 2, 2, ...), features min(32 * 2^s, 320 | 512), blocks
# (1, 3, 4, 6, 6, ...), one decoder conv, conv_bias=True, affine instance
# norm, LeakyReLU, deep supervision (its heads are always built);
# counted with sum(p.numel() for p in model.parameters()).
REFERENCE_COUNTS = {
  (3, 5): 62_809_928,
  (3, 6): 102_349_770,  # ResEnc M/L, 3-D default.
  (3, 7): 141_889_612,
  (2, 7): 105_916_812,
  (2, 8): 140_017_038,  # ResEnc M/L, 2-D default.
}


@pytest.mark.parametrize(
  "preset", ["M", pytest.param("L", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_presets_build_abstractly_with_reference_counts(preset, spatial_dims):
  model = ResEncUNet(
    num_classes=2,
    spatial_dims=spatial_dims,
    preset=preset,
    deep_supervision=True,
  )
  stages = model.resolved_num_stages()
  assert stages == {2: 8, 3: 6}[spatial_dims]
  shape = (1, *(2 ** (stages - 1),) * spatial_dims, 1)
  variables, logits = model_testing.abstract(model, shape)
  model_testing.assert_logits(logits, shape, 2)
  count = model_testing.num_params(variables)
  assert count == REFERENCE_COUNTS[(spatial_dims, stages)]


@pytest.mark.slow
@pytest.mark.parametrize("dims_stages", sorted(REFERENCE_COUNTS))
def test_other_stage_counts_match_reference(dims_stages):
  spatial_dims, stages = dims_stages
  model = ResEncUNet(
    num_classes=2,
    spatial_dims=spatial_dims,
    num_stages=stages,
    deep_supervision=True,
  )
  variables = model_testing.abstract_variables(
    model, (1, *(2 ** (stages - 1),) * spatial_dims, 1)
  )
  assert model_testing.num_params(variables) == REFERENCE_COUNTS[dims_stages]


def test_stages_for_patch_follows_nnunet_min_edge():
  # Halve while >= 8 voxels: 128 -> 4 (5 times), 192 -> 6 (5), 512 -> 4 (7).
  assert resenc_unet.stages_for_patch((128, 128, 128)) == 6
  assert resenc_unet.stages_for_patch((192, 192, 192)) == 6
  assert resenc_unet.stages_for_patch((512, 512)) == 8
  assert resenc_unet.stages_for_patch((64, 128, 128)) == 5
  assert resenc_unet.stages_for_patch((7, 7)) == 1


def test_layout_blocks_strides_and_shortcuts():
  model = ResEncUNet(num_classes=3, **TINY)
  variables, _ = model_testing.abstract(model, (1, 16, 16, 1))
  params = variables["params"]
  blocks = sorted(k for k in params if k.startswith("stage_"))
  assert blocks == [
    "stage_0_block_0",
    "stage_1_block_0",
    "stage_1_block_1",
    "stage_2_block_0",
  ]
  # Projection shortcuts only where the channels change.
  assert "shortcut" not in params["stage_0_block_0"]
  assert params["stage_1_block_0"]["shortcut"]["kernel"].shape == (1, 1, 4, 8)
  assert "shortcut" not in params["stage_1_block_1"]
  # nnU-Net's conv_bias=True; decoder: transposed conv to the skip width,
  # then a conv over [upsampled, skip].
  assert params["stem"]["conv_0"]["bias"].shape == (4,)
  assert params["upsample_1"]["kernel"].shape == (2, 2, 16, 8)
  assert params["up_1"]["conv_0"]["kernel"].shape == (3, 3, 16, 8)
  assert params["head"]["kernel"].shape == (1, 1, 4, 3)
  assert "aux_head_1" not in params


def test_strided_block_downsamples_and_pools_the_shortcut():
  # With zero kernels and biases the residual branch is 0 after instance
  # norm, so the block returns lrelu(avg_pool_2(x)): the ResNet-D shortcut.
  block = ResidualBlockD(3, spatial_dims=2, strides=2)
  x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
  variables = block.init(jax.random.key(1), x, train=False)
  zeros = jax.tree.map(jnp.zeros_like, variables)
  for i in (0, 1):
    zeros["params"][f"norm_{i}"]["scale"] = jnp.ones((3,))
  y = block.apply(zeros, x, train=False)
  pooled = np.asarray(x).reshape(2, 4, 2, 3, 2, 3).mean(axis=(2, 4))
  expected = np.where(pooled > 0, pooled, 0.01 * pooled)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deep_supervision_heads_have_the_expected_scales(spatial_dims):
  model = ResEncUNet(
    num_classes=2,
    spatial_dims=spatial_dims,
    features=(4, 8, 8, 8),
    blocks_per_stage=(1, 1, 1, 1),
    deep_supervision=True,
  )
  shape = (1, *(16,) * spatial_dims, 1)
  variables, (logits, state) = model_testing.abstract(
    model, shape, mutable=["aux_logits"], train=True
  )
  model_testing.assert_logits(logits, shape, 2)
  aux = state["aux_logits"]["deep_supervision"]
  assert [a.shape for a in aux] == [
    (1, *(8,) * spatial_dims, 2),
    (1, *(4,) * spatial_dims, 2),
  ]
  assert {"aux_head_1", "aux_head_2"} <= set(variables["params"])


@pytest.mark.parametrize(
  "spatial_dims", [2, pytest.param(3, marks=pytest.mark.slow)]
)
def test_tiny_model_trains_with_finite_gradients(spatial_dims):
  model = ResEncUNet(
    num_classes=2, spatial_dims=spatial_dims, features=(2, 4), num_stages=2
  )
  shape = (2, *(8,) * spatial_dims, 1)
  variables, x = model_testing.init(model, shape)
  grads, _ = model_testing.train_gradients(model, variables, x, 2)
  model_testing.assert_finite(grads, nonzero=True)


def test_rejects_bad_arguments():
  with pytest.raises(ValueError, match="preset"):
    ResEncUNet(num_classes=2, preset="XXL")
  with pytest.raises(ValueError, match="blocks_per_stage"):
    ResEncUNet(num_classes=2, features=(4, 8), blocks_per_stage=(1,))
  model_testing.assert_rejects(
    ResEncUNet(num_classes=2, **TINY), [((1, 10, 16, 1), "multiples of 4")]
  )


@pytest.mark.long
@pytest.mark.parametrize(
  "spatial_dims, axes",
  [(2, {"data": 8}), (3, {"data": 2, "spatial": 4})],
  ids=["2d-data8", "3d-data2-spatial4"],
)
def test_sharded_equals_unsharded(spatial_dims, axes, eight_devices):
  def make(**kwargs):
    return ResEncUNet(
      num_classes=2,
      spatial_dims=spatial_dims,
      features=(4, 8),
      blocks_per_stage=(1, 1),
      **kwargs,
    )

  shape = (8, 8, 8, 1) if spatial_dims == 2 else (2, 8, 8, 8, 1)
  model_testing.assert_sharded_matches_unsharded(
    make, shape, eight_devices, axes
  )


def test_bfloat16_and_remat_keep_parameters_and_float32_logits():
  shape = (1, 16, 16, 1)
  plain, _ = model_testing.abstract(ResEncUNet(num_classes=2, **TINY), shape)
  model = ResEncUNet(num_classes=2, dtype=jnp.bfloat16, remat=True, **TINY)
  variables, logits = model_testing.abstract(model, shape)
  model_testing.assert_logits(logits, shape, 2)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == (
    jax.tree.map(lambda a: (a.shape, a.dtype), plain)
  )
