"""Tests for medseg_jax.models.swin_unetr."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from medseg_jax import models
from medseg_jax.models import swin_unetr
from medseg_jax.models.swin_unetr import SwinBlock
from medseg_jax.models.swin_unetr import SwinUNETR
from tests.models import model_testing

# One stage of two blocks (the second shifted): spatial multiple 2 * 2 = 4.
TINY = dict(feature_size=6, depths=(2,), num_heads=(2,), window_size=4)
SHAPES = {2: (2, 16, 16, 1), 3: (1, 8, 16, 8, 1)}


# ---------------------------------------------------------------------------
# The shifted-window mask against a brute-force construction.
# ---------------------------------------------------------------------------


def brute_force_mask(size, window, shift):
  """Enumerates windows and their tokens of the rolled map directly.

  Position `p` of the map rolled by `-shift` holds the voxel `(p + shift)
  mod S`; it wrapped around iff `p + shift >= S`. Two tokens of a window
  were neighbours before the roll iff they agree on having wrapped, along
  every axis.
  """
  grids = [range(s // w) for s, w in zip(size, window, strict=True)]
  masks = []
  for corner in itertools.product(*grids):
    tokens = list(itertools.product(*[range(w) for w in window]))
    wrapped = [
      tuple(
        c * w + t + h >= s if h else False
        for c, t, w, h, s in zip(corner, tok, window, shift, size, strict=True)
      )
      for tok in tokens
    ]
    masks.append([[a == b for b in wrapped] for a in wrapped])
  return np.array(masks)


@pytest.mark.parametrize(
  "size, window, shift",
  [
    ((8, 8), (4, 4), (2, 2)),
    ((6, 9), (3, 3), (1, 1)),
    ((14, 14, 14), (7, 7, 7), (3, 3, 3)),
    ((6, 14, 14), (6, 7, 7), (0, 3, 3)),  # One window along depth.
  ],
)
def test_shifted_window_mask_matches_brute_force(size, window, shift):
  mask = swin_unetr.shifted_window_mask(size, window, shift)
  expected = brute_force_mask(size, window, shift)
  assert mask.shape == expected.shape
  np.testing.assert_array_equal(mask, expected)
  # Not vacuous: the last window mixes wrapped and unwrapped tokens.
  assert not mask[-1].all() and mask[0].all()


def test_stage_windows_shrink_to_small_maps():
  assert swin_unetr.stage_windows((48, 48, 48), 7, True) == ((7,) * 3, (3,) * 3)
  assert swin_unetr.stage_windows((48, 48), 7, False) == ((7, 7), (0, 0))
  assert swin_unetr.stage_windows((6, 12, 7), 7, True) == ((6, 7, 7), (0, 3, 0))


def test_window_partition_round_trip():
  x = jnp.arange(2 * 6 * 8 * 3, dtype=jnp.float32).reshape(2, 6, 8, 3)
  windows = swin_unetr.window_partition(x, (3, 4))
  assert windows.shape == (2, 4, 12, 3)
  # Window 1 is rows 0-2, columns 4-7, in raster order.
  np.testing.assert_array_equal(windows[0, 1], x[0, :3, 4:].reshape(12, 3))
  np.testing.assert_array_equal(
    swin_unetr.window_reverse(windows, (3, 4), (6, 8)), x
  )


# ---------------------------------------------------------------------------
# A shifted Swin block against global attention with an explicit mask.
# ---------------------------------------------------------------------------


def brute_force_block(x, params, num_heads, window_size, shifted):
  """`x + proj(attention(LN(x)))` over all token pairs, in float64.

  Token `i` may attend to token `j` iff they lie in the same (shifted)
  window and, along every shifted axis, on the same side of the roll's
  wrap; the bias is the table row of their offset `o_i - o_j`.
  """
  x = np.asarray(x, np.float64)[0]
  size = x.shape[:-1]
  c = x.shape[-1]
  coords = np.array(list(itertools.product(*[range(s) for s in size])))
  flat = x.reshape(-1, c)
  y = (flat - flat.mean(-1, keepdims=True)) / np.sqrt(
    flat.var(-1, keepdims=True) + 1e-5
  )
  attn = params["attention"]
  qkv = y @ np.asarray(attn["qkv"]["kernel"]) + np.asarray(attn["qkv"]["bias"])
  hd = c // num_heads
  q, k, v = (
    qkv[:, i * c : (i + 1) * c].reshape(-1, num_heads, hd) for i in range(3)
  )
  window, shift = swin_unetr.stage_windows(size, window_size, shifted)
  rolled = (coords - np.array(shift)) % np.array(size)
  same_window = np.all(
    (rolled[:, None] // window) == (rolled[None] // window), -1
  )
  wrapped = rolled >= np.array(size) - np.array(shift)
  wrapped &= np.array(shift) > 0
  same_side = np.all(wrapped[:, None] == wrapped[None], -1)
  offsets = coords[:, None] - coords[None] + window_size - 1
  row = np.zeros(offsets.shape[:2], np.int64)
  for axis in range(len(size)):
    row = row * (2 * window_size - 1) + offsets[..., axis]
  table = np.asarray(attn["relative_position_bias"], np.float64)
  logits = np.einsum("ihc,jhc->hij", q, k) / np.sqrt(hd)
  allowed = same_window & same_side
  row = np.where(allowed, row, 0)  # Offsets beyond a window are masked.
  logits = logits + np.transpose(table[row], (2, 0, 1))
  logits = np.where(allowed, logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("hij,jhc->ihc", weights, v).reshape(-1, c)
  out = out @ np.asarray(attn["proj"]["kernel"]) + np.asarray(
    attn["proj"]["bias"]
  )
  return (flat + out).reshape(1, *size, c)


@pytest.mark.parametrize(
  "size, shifted",
  [((8, 8), True), ((8, 8), False), ((3, 8, 8), True)],
  ids=["2d-shifted", "2d-plain", "3d-shifted-small-depth"],
)
def test_swin_block_equals_global_masked_attention(size, shifted):
  block = SwinBlock(num_heads=2, window_size=4, shifted=shifted)
  x = jax.random.normal(jax.random.key(0), (1, *size, 8))
  shapes = model_testing.abstract_variables(block, x.shape)["params"]
  rng = np.random.default_rng(0)

  # Random projections and biases, a bias table on the logits' scale, unit
  # layer norms, and the MLP branch zeroed, so the block is x + attention.
  def fill(path, p):
    if path[0].key.startswith("norm"):
      return jnp.full(p.shape, float(path[1].key == "scale"), p.dtype)
    if path[0].key == "mlp" and path[1].key == "fc2":
      return jnp.zeros(p.shape, p.dtype)
    return jnp.asarray(rng.normal(size=p.shape) * 0.5, p.dtype)

  params = jax.tree_util.tree_map_with_path(fill, shapes)
  got = model_testing.apply(block, {"params": params}, x, train=False)
  expected = brute_force_block(x, params, 2, 4, shifted)
  np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)


# ---------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_builds_abstractly(spatial_dims):
  shape = SHAPES[spatial_dims]
  model = SwinUNETR(num_classes=3, spatial_dims=spatial_dims, **TINY)
  variables, logits = model_testing.abstract(model, shape)
  model_testing.assert_logits(logits, shape, 3)
  params = variables["params"]
  assert params["stage_0_block_0"]["attention"][
    "relative_position_bias"
  ].shape == (
    7**spatial_dims,
    2,
  )
  assert params["stage_0_merging"]["reduction"]["kernel"].shape == (
    2**spatial_dims * 6,
    12,
  )
  assert params["decoder_0"]["upsample"]["kernel"].shape == (
    (2,) * spatial_dims + (6, 6)
  )


@pytest.mark.slow  # Traces the full-size model: ~3 s per case.
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_default_config_builds_abstractly(spatial_dims):
  model = SwinUNETR(num_classes=2, spatial_dims=spatial_dims)
  shape = (1, *(64,) * spatial_dims, 1)
  _, logits = model_testing.abstract(model, shape)
  model_testing.assert_logits(logits, shape, 2)


@pytest.mark.parametrize(
  "feature_size, ours, reference",
  [
    # Tang et al. (2022), Table S.3 and the authors on MONAI
    # research-contributions issue 58: "62M", quoted as 62.2M; MONAI's
    # SwinUNETR(in_channels=1, out_channels=14, feature_size=48) has
    # 62,187,296. Ours has 9,312 more: the scale and shift of each
    # instance norm (MONAI's have none).
    (48, 62_196_608, 62.2e6),
    # MONAI's default feature_size=24: 15,703,304 in MONAI, + 4,656.
    (24, 15_707_960, 15_703_304),
  ],
)
def test_parameter_count_against_reference(feature_size, ours, reference):
  model = SwinUNETR(num_classes=14, in_channels=1, feature_size=feature_size)
  variables = model_testing.abstract_variables(model, (1, 96, 96, 96, 1))
  count = model_testing.num_params(variables["params"])
  print(f"SwinUNETR f={feature_size}: {count:,} vs reference {reference:,.0f}")
  assert count == ours
  assert abs(count - reference) / reference < 0.05


def test_bfloat16_keeps_float32_params_and_logits():
  model = SwinUNETR(num_classes=3, spatial_dims=2, dtype=jnp.bfloat16, **TINY)
  variables, logits = model_testing.abstract(model, SHAPES[2])
  assert logits.dtype == jnp.float32
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype("float32")}


def test_bad_sizes_name_the_multiple():
  model = SwinUNETR(num_classes=2, in_channels=1)  # 3-D, multiple 32.
  model_testing.assert_rejects(
    model,
    [
      ((1, 64, 64, 1), r"\[B, D, H, W, C\]"),
      ((1, 32, 32, 32, 2), "1 input channels"),
      (
        (1, 32, 40, 64, 1),
        r"patch_size=2 and 4 stages.*multiples of 32.*\(32, 64, 64\)",
      ),
    ],
  )


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"patch_size": 3}, "patch_size must be a power of 2"),
    ({"depths": (2, 2), "num_heads": (3,)}, "one entry per stage"),
    ({"feature_size": 10}, r"num_heads\[0\]=3 must divide"),
    ({"depths": ()}, "at least one stage"),
    ({"norm": "layer"}, "norm"),
  ],
)
def test_bad_config_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    SwinUNETR(num_classes=2, **kwargs)


def test_pad_multiple_follows_the_fields():
  config = ml_collections.ConfigDict(
    dict(model=dict(name="swin_unetr"), data=dict())
  )
  assert models.pad_multiple(config) == 32
  config.model.depths = (2, 2)
  config.model.num_heads = (3, 6)
  config.model.patch_size = 4
  assert models.pad_multiple(config) == 16


@pytest.mark.slow
def test_train_step_gradients_finite():
  model = SwinUNETR(num_classes=3, spatial_dims=2, **TINY)
  variables, x = model_testing.init(model, SHAPES[2])
  grads, _ = model_testing.train_gradients(model, variables, x, 3)
  model_testing.assert_finite(grads, nonzero=True)
