"""Tests for evaluation.inference: sliding windows, flip TTA, components."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax import models
from medseg_jax.evaluation import inference

ACCUMULATE = ("device", "host")


def coverage(shape, window, starts):
  """How many windows cover each voxel of the (padded) volume."""
  padded = tuple(max(s, w) for s, w in zip(shape, window, strict=True))
  count = np.zeros(padded, np.int32)
  for start in starts:
    count[
      tuple(slice(a, a + w) for a, w in zip(start, window, strict=True))
    ] += 1
  return count


# ---- window_starts ----------------------------------------------------------


@pytest.mark.parametrize(
  "shape, window, overlap",
  [
    ((10,), (4,), 0.5),
    ((17, 9), (8, 4), 0.5),
    ((16, 16), (8, 8), 0.0),
    ((13, 7, 11), (5, 5, 4), 0.25),
    ((160, 192, 160), (96, 96, 96), 0.5),
    ((3, 20), (8, 8), 0.5),  # First axis shorter than the window.
  ],
)
def test_window_starts_cover_every_voxel(shape, window, overlap):
  starts = inference.window_starts(shape, window, overlap)
  padded = tuple(max(s, w) for s, w in zip(shape, window, strict=True))
  count = coverage(shape, window, starts)
  assert count.min() >= 1
  for axis, (p, w) in enumerate(zip(padded, window, strict=True)):
    axis_starts = sorted({s[axis] for s in starts})
    assert axis_starts[0] == 0
    assert axis_starts[-1] + w == p  # Last window ends at the border.
    gaps = np.diff(axis_starts)
    # Neighbours are at most window * (1 - overlap) apart.
    assert np.all(gaps <= w * (1 - overlap) + 1e-9)
    assert np.all(gaps >= 1)
  # Windows are the product of the per-axis starts.
  per_axis = [sorted({s[a] for s in starts}) for a in range(len(shape))]
  assert starts == list(itertools.product(*per_axis))


def test_window_starts_hand_computed():
  # 10 voxels, window 4, step <= 2: 4 windows at 0, 2, 4, 6.
  assert inference.window_starts((10,), 4, 0.5) == [(0,), (2,), (4,), (6,)]
  # 11 voxels: ceil(7 / 2) + 1 = 5 windows, spread by 7 / 4 = 1.75.
  assert inference.window_starts((11,), 4, 0.5) == [
    (0,),
    (2,),
    (4,),
    (5,),
    (7,),
  ]
  # Overlap 0 on a divisible axis: disjoint tiles.
  assert inference.window_starts((12,), 4, 0.0) == [(0,), (4,), (8,)]
  # Overlap 0, not divisible: 3 windows, the last aligned to the end.
  assert inference.window_starts((10,), 4, 0.0) == [(0,), (3,), (6,)]
  # Shorter than or equal to the window: one window at 0.
  assert inference.window_starts((3, 8), (8, 8), 0.5) == [(0, 0)]
  # nnU-Net-like case: 3 windows per axis.
  starts = inference.window_starts((160, 192, 160), 96, 0.5)
  assert len(starts) == 27
  assert sorted({s[0] for s in starts}) == [0, 32, 64]
  assert sorted({s[1] for s in starts}) == [0, 48, 96]


def test_window_starts_rejects_bad_arguments():
  with pytest.raises(ValueError, match="overlap"):
    inference.window_starts((10,), 4, 1.0)
  with pytest.raises(ValueError, match="window"):
    inference.window_starts((10, 10), (4,), 0.5)
  with pytest.raises(ValueError, match="window"):
    inference.window_starts((10,), 0, 0.5)


# ---- gaussian_weights -------------------------------------------------------


def test_gaussian_weights():
  g = inference.gaussian_weights((8, 16), sigma_scale=0.125)
  assert g.shape == (8, 16) and g.dtype == np.float32
  assert g.max() == pytest.approx(1.0, abs=1e-6)
  assert g.min() > 0
  np.testing.assert_allclose(g, g[::-1, ::-1], rtol=1e-6)  # Symmetric.
  # Separable: sigma = 2 along the second axis, centre 7.5.
  x = np.arange(16) - 7.5
  row = np.exp(-0.5 * (x / 2.0) ** 2)
  np.testing.assert_allclose(g[3] / g[3].max(), row / row.max(), rtol=1e-5)
  # Underflow is raised to a positive floor.
  tiny = inference.gaussian_weights((64,), sigma_scale=0.01)
  assert tiny.min() > 0
  with pytest.raises(ValueError, match="mode"):
    inference.importance_weights((4,), mode="triangle")


# ---- sliding_window_predict -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_unet():
  model = models.get_model(
    "unet",
    num_classes=3,
    spatial_dims=3,
    in_channels=1,
    features=(4, 8),
    norm="instance",
  )
  variables = model.init(
    jax.random.key(0), jnp.zeros((1, 8, 8, 8, 1)), train=False
  )
  return model, variables


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", ACCUMULATE)
def test_whole_volume_window_equals_single_prediction(tiny_unet, accumulate):
  model, variables = tiny_unet
  image = jax.random.normal(jax.random.key(1), (8, 12, 10, 1))
  predict_fn = inference.make_window_predictor(model, variables)
  out = inference.sliding_window_predict(
    predict_fn,
    image,
    window=(8, 12, 10),
    overlap=0.5,
    sw_batch_size=2,
    mode="gaussian",
    num_classes=3,
    accumulate=accumulate,
  )
  logits = model.apply(variables, image[None], train=False)
  expected = jax.nn.softmax(logits, axis=-1)[0]
  assert out.shape == (8, 12, 10, 3)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_real_model_overlapping_windows_device_equals_host(tiny_unet):
  model, variables = tiny_unet
  image = jax.random.normal(jax.random.key(2), (11, 9, 13, 1))
  predict_fn = inference.make_window_predictor(model, variables)
  outs = [
    inference.sliding_window_predict(
      predict_fn,
      image,
      window=(6, 6, 8),
      overlap=0.5,
      sw_batch_size=3,
      accumulate=acc,
    )
    for acc in ACCUMULATE
  ]
  assert outs[0].shape == (11, 9, 13, 3)
  np.testing.assert_allclose(np.asarray(outs[0]), outs[1], atol=1e-6)
  np.testing.assert_allclose(np.asarray(outs[0]).sum(-1), 1.0, atol=1e-5)


def constant_predictor(k):
  """Per-class constants that are powers of two, so blending is exact."""
  values = jnp.asarray([2.0**-c for c in range(k)], jnp.float32)

  @jax.jit
  def predict(x):
    return jnp.broadcast_to(values, (*x.shape[:-1], k))

  return predict


@pytest.mark.parametrize("accumulate", ACCUMULATE)
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize(
  "shape, window, overlap, batch",
  [
    ((37, 23), (16, 8), 0.5, 4),  # 2-D, non-divisible.
    ((5, 30), (8, 8), 0.75, 3),  # 2-D, one axis padded.
    ((13, 17, 10), (6, 8, 4), 0.5, 4),  # 3-D, non-divisible.
  ],
)
def test_constant_predictor_is_seam_free(
  shape, window, overlap, batch, mode, accumulate
):
  image = np.zeros((*shape, 1), np.float32)
  out = inference.sliding_window_predict(
    constant_predictor(3),
    image,
    window=window,
    overlap=overlap,
    sw_batch_size=batch,
    mode=mode,
    accumulate=accumulate,
  )
  expected = np.broadcast_to(
    np.asarray([1.0, 0.5, 0.25], np.float32), (*shape, 3)
  )
  np.testing.assert_array_equal(np.asarray(out), expected)


def coordinates(shape):
  """`f32[*S, d]`: each voxel's absolute position as channels."""
  grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
  return np.stack(grids, axis=-1).astype(np.float32)


@jax.jit
def linear_predictor(x):
  """Output = an affine function of the input (the absolute coordinates)."""
  d = x.shape[-1]
  coef = jnp.arange(1, d + 1, dtype=jnp.float32)
  out = jnp.stack([x @ coef + 1.0, -2.0 * x[..., 0]], axis=-1)
  return out


@pytest.mark.parametrize("accumulate", ACCUMULATE)
@pytest.mark.parametrize(
  "shape, window, overlap",
  [
    ((29, 19), (8, 8), 0.5),
    ((11, 14, 9), (4, 6, 4), 0.5),
    ((9, 7, 12), (4, 4, 4), 0.0),
  ],
)
def test_position_dependent_predictor_is_reproduced(
  shape, window, overlap, accumulate
):
  image = coordinates(shape)
  out = inference.sliding_window_predict(
    linear_predictor,
    image,
    window=window,
    overlap=overlap,
    sw_batch_size=4,
    mode="gaussian",
    num_classes=2,
    accumulate=accumulate,
  )
  coef = np.arange(1, len(shape) + 1, dtype=np.float32)
  expected = np.stack([image @ coef + 1.0, -2.0 * image[..., 0]], axis=-1)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-5)


def test_padding_uses_pad_value_and_is_cropped():
  # Window larger than the volume along both axes: one window, padded
  # symmetrically; the identity predictor gives back the image.
  image = coordinates((3, 5))
  out = inference.sliding_window_predict(
    jax.jit(lambda x: x),
    image,
    window=8,
    sw_batch_size=2,
    pad_value=-7.0,
  )
  np.testing.assert_allclose(np.asarray(out), image, atol=1e-6)

  seen = []

  def recording_predictor(x):
    if not isinstance(x, jax.core.Tracer):  # Skip the shape probe.
      seen.append(np.asarray(x))
    return x

  inference.sliding_window_predict(
    recording_predictor,
    image,
    window=8,
    sw_batch_size=2,
    pad_value=-7.0,
    accumulate="host",
  )
  window_in = seen[-1]
  assert window_in.shape == (2, 8, 8, 2)
  # 3 rows padded to 8: 2 before, 3 after; 5 columns: 1 before, 2 after.
  np.testing.assert_array_equal(window_in[0, 2:5, 1:6], image)
  assert np.all(window_in[0, :2] == -7.0) and np.all(window_in[0, 5:] == -7.0)


def test_predictor_calls_have_one_shape():
  shapes = set()

  def predictor(x):
    shapes.add(x.shape)
    return jnp.ones((*x.shape[:-1], 2))

  for accumulate in ACCUMULATE:
    inference.sliding_window_predict(
      predictor,
      np.zeros((21, 10, 1), np.float32),
      window=(8, 8),
      sw_batch_size=4,  # 3 x 2 = 6 windows: the second batch is padded.
      accumulate=accumulate,
    )
  assert shapes == {(4, 8, 8, 1)}


def test_sliding_window_rejects_bad_arguments():
  image = np.zeros((8, 8, 1), np.float32)
  with pytest.raises(ValueError, match="num_classes"):
    inference.sliding_window_predict(
      constant_predictor(3), image, window=4, num_classes=2
    )
  with pytest.raises(ValueError, match="accumulate"):
    inference.sliding_window_predict(
      constant_predictor(3), image, window=4, accumulate="gpu"
    )
  with pytest.raises(ValueError, match="image"):
    inference.sliding_window_predict(
      constant_predictor(3), np.zeros((8, 1)), window=4
    )


# ---- flip_tta ---------------------------------------------------------------


def test_flip_tta_of_equivariant_predictor_equals_plain():
  # A voxel-wise predictor (1^3 convolution + softmax) is flip-equivariant.
  kernel = jax.random.normal(jax.random.key(3), (2, 3))

  @jax.jit
  def pointwise(x):
    return jax.nn.softmax(jnp.tanh(x) @ kernel, axis=-1)

  x = jax.random.normal(jax.random.key(4), (2, 4, 6, 5, 2))
  tta = inference.flip_tta(pointwise, axes=(0, 1, 2))
  np.testing.assert_allclose(tta(x), pointwise(x), atol=1e-6)


def test_flip_tta_averages_unflipped_predictions():
  # Prediction = position within the window along axis 1 (not equivariant).
  @jax.jit
  def ramp(x):
    pos = jnp.arange(x.shape[2], dtype=jnp.float32)
    return jnp.broadcast_to(pos[None, None, :, None], (*x.shape[:-1], 1))

  x = jnp.zeros((1, 3, 5, 1))
  # Along axis 1: (p + flip(p)) / 2 = (W - 1) / 2 everywhere.
  np.testing.assert_allclose(inference.flip_tta(ramp, axes=(1,))(x), 2.0)
  # Along axis 0 only: unchanged.
  np.testing.assert_allclose(inference.flip_tta(ramp, axes=(0,))(x), ramp(x))
  # In sliding windows too.
  out = inference.sliding_window_predict(
    inference.flip_tta(ramp, axes=(0, 1)),
    np.zeros((9, 9, 1), np.float32),
    window=5,
    overlap=0.5,
  )
  np.testing.assert_allclose(np.asarray(out), 2.0, atol=1e-6)


def test_flip_tta_rejects_bad_axes():
  with pytest.raises(ValueError, match="out of range"):
    inference.flip_tta(jax.jit(lambda x: x), axes=(2,))(jnp.zeros((1, 4, 4, 1)))
  with pytest.raises(ValueError, match="repeated"):
    inference.flip_tta(jax.jit(lambda x: x), axes=(0, 0))


# ---- keep_largest_component -------------------------------------------------


def test_keep_largest_component_2d():
  label = np.array(
    [
      [1, 1, 0, 0, 2],
      [1, 1, 0, 1, 0],
      [0, 0, 0, 0, 0],
      [2, 2, 2, 0, 1],
    ],
    np.int32,
  )
  expected = np.array(
    [
      [1, 1, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [0, 0, 0, 0, 0],
      [2, 2, 2, 0, 0],
    ],
    np.int32,
  )
  out = inference.keep_largest_component(label)
  np.testing.assert_array_equal(out, expected)
  assert out.dtype == np.int32
  # Only class 2 cleaned: class 1 islands stay.
  only_2 = inference.keep_largest_component(label, classes=[2])
  np.testing.assert_array_equal(only_2[:, :4], label[:, :4])
  assert only_2[0, 4] == 0 and only_2[3, 4] == 1


def test_keep_largest_component_3d_connectivity():
  label = np.zeros((3, 3, 3), np.uint8)
  label[0, 0, 0] = 1
  label[1, 1, 1] = 1  # Touches (0, 0, 0) only at a corner.
  label[2, 1, 1] = 1
  # Faces only: {(1,1,1), (2,1,1)} is larger; the corner voxel goes.
  out = inference.keep_largest_component(label)
  assert out[0, 0, 0] == 0 and out[1, 1, 1] == 1 and out[2, 1, 1] == 1
  # Corners connect: one component of 3, nothing removed.
  full = inference.keep_largest_component(label, connectivity=3)
  np.testing.assert_array_equal(full, label)
  # Background (0) is kept, all-background is unchanged.
  empty = np.zeros((4, 4), np.int64)
  np.testing.assert_array_equal(inference.keep_largest_component(empty), 0)
  with pytest.raises(ValueError, match="integer"):
    inference.keep_largest_component(label.astype(np.float32))
