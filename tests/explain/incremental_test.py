"""Incremental occlusion equals the full batched path, map for map, on
U-Nets of every supported layout, in 2-D and 3-D, at image borders and
with padded inputs; unsupported models are named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax import explain
from medseg_jax import models
from medseg_jax.explain import incremental
from medseg_jax.explain.occlusion import occlusion_boxes


def _randomised(variables, key):
  """Every parameter and batch statistic redrawn, so that a mixed-up
  layer, offset or crop changes the logits (init's statistics are 0/1)."""
  paths, tree = jax.tree_util.tree_flatten_with_path(variables)
  keys = jax.random.split(key, len(paths))
  out = []
  for k, (path, v) in zip(keys, paths, strict=True):
    name = jax.tree_util.keystr(path)
    if "scale" in name or "var" in name:
      out.append(0.5 + jax.random.uniform(k, v.shape))
    elif v.ndim == 1:  # biases, offsets, means
      out.append(0.2 * jax.random.normal(k, v.shape))
    else:
      out.append(0.3 * jax.random.normal(k, v.shape))
  return jax.tree.unflatten(tree, out)


def _setup(dims=2, size=32, batch=2, **options):
  options = dict(features=(4, 8, 16), norm="batch") | options
  model = models.get_model("unet", num_classes=3, spatial_dims=dims, **options)
  shape = (batch, *((size,) * dims if isinstance(size, int) else size), 2)
  x = jax.random.normal(jax.random.key(3), shape)
  init_shape = tuple(
    -(-s // 4) * 4 if i and i <= dims else s for i, s in enumerate(shape)
  )
  variables = jax.jit(
    lambda k: model.init(k, jnp.zeros(init_shape), train=False)
  )(jax.random.key(2))
  return model, _randomised(variables, jax.random.key(5)), x


def _close(fast, full, model, variables, x, target):
  """Equal up to float32 rounding of the full path's whole-image score
  sums (its drop is a difference of two of them): 1e-5 of the sum of the
  class logit's magnitudes; one wrong voxel in a patch moves a drop by
  about a whole voxel's logit, hundreds of times more."""
  logits = np.asarray(model.apply(variables, x, train=False))
  scale = np.abs(logits[..., target.class_index]).reshape(len(x), -1).sum(1)
  assert np.isfinite(full).all() and np.abs(full).max() > 0
  np.testing.assert_allclose(fast, full, rtol=0, atol=1e-5 * scale.max())


def _both(model, variables, x, target, **options):
  def run(flag):
    fn = jax.jit(
      lambda v, x: explain.occlusion(
        model, v, x, target, incremental=flag, **options
      )
    )
    return np.asarray(fn(variables, x))

  return run(True), run(False)


CASES = {
  "2d": dict(),
  "2d-resize": dict(upsample="resize"),
  "2d-residual": dict(residual=True),
  "2d-cicek": dict(double_within_level=True),
  "2d-no-norm": dict(norm="none"),
  "2d-deep": dict(features=(2, 4, 4, 8, 8)),
}
# make test runs the first; make test-long all (5-10 s each).
_LONG = pytest.mark.long


@pytest.mark.slow
@pytest.mark.parametrize(
  "case",
  [c if c == "2d" else pytest.param(c, marks=_LONG) for c in sorted(CASES)],
)
def test_incremental_equals_full(case):
  model, variables, x = _setup(**CASES[case])
  # The class predicted most often, so that its region is not empty.
  labels = np.argmax(model.apply(variables, x, train=False), axis=-1)
  common = int(np.bincount(labels.ravel()).argmax())
  target = explain.Target(class_index=common, region="predicted")
  fast, full = _both(
    model, variables, x, target, window=7, stride=5, fill=0.5, batch_size=8
  )
  _close(fast, full, model, variables, x, target)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize(
  "window,stride", [(1, 1), (4, 4), (16, 8), (31, 1000), (32, 1)]
)
def test_boxes_from_one_voxel_to_the_whole_image(window, stride):
  model, variables, x = _setup(size=32, batch=1)
  target = explain.Target(class_index=2, region="all")
  fast, full = _both(
    model, variables, x, target, window=window, stride=stride, fill="mean"
  )
  _close(fast, full, model, variables, x, target)


@pytest.mark.slow
@pytest.mark.long
def test_3d_and_anisotropic_boxes():
  model, variables, x = _setup(dims=3, size=(16, 12, 20), batch=1)
  target = explain.Target(class_index=1, region="predicted")
  fast, full = _both(
    model, variables, x, target, window=(3, 5, 4), stride=(2, 3, 3), fill=0.0
  )
  assert fast.shape == (1, 16, 12, 20)
  _close(fast, full, model, variables, x, target)


@pytest.mark.slow
def test_padded_input_as_the_model_pads_it():
  model, variables, x = _setup(size=(30, 21), batch=2, pad_input=True)
  target = explain.Target(class_index=1, region="predicted")
  fast, full = _both(model, variables, x, target, window=6, stride=5)
  assert fast.shape == (2, 30, 21)
  _close(fast, full, model, variables, x, target)


def test_graph_reproduces_the_model():
  model, variables, x = _setup(residual=True, upsample="resize")
  ops = incremental.graph_of(model)
  got = jax.jit(
    lambda v, x: incremental.run_full(ops, v, x, model.dtype)["logits"]
  )(variables, x)
  want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_patches_are_smaller_than_the_image():
  model, variables, x = _setup(size=64, batch=1)
  ops = incremental.graph_of(model)
  shapes = incremental.tensor_shapes(
    jax.eval_shape(lambda: incremental.run_full(ops, variables, x, jnp.float32))
  )
  corners, window = occlusion_boxes((64, 64), 8, 8)
  layout = incremental.plan_layout(ops, shapes, corners, window)
  # 8-voxel boxes: two 3x3 convolutions per block, poolings, up-convs.
  assert layout.sizes["down_0"] == (12, 12)
  assert layout.sizes["pool_0"] == (6, 6)
  assert layout.sizes["logits"] < (64, 64)
  # Each row of corners lies inside its tensor.
  for name, starts in layout.starts.items():
    size = np.asarray(layout.sizes[name])
    assert (starts >= 0).all() and (starts + size <= shapes[name]).all()


@pytest.mark.parametrize("norm", ["instance", "group"])
def test_non_local_models_take_the_full_path_or_are_refused(norm):
  model = models.get_model(
    "unet", num_classes=2, spatial_dims=2, features=(4, 8), norm=norm
  )
  assert incremental.graph_of(model) is None
  x = jnp.zeros((1, 8, 8, 1))
  variables = jax.jit(lambda k: model.init(k, x, train=False))(
    jax.random.key(0)
  )
  target = explain.Target(class_index=1, region="all")
  with pytest.raises(ValueError, match=f"norm={norm!r}"):
    explain.occlusion(model, variables, x, target, window=4, incremental=True)
  out = jax.jit(
    lambda v, x: explain.occlusion(model, v, x, target, window=4, stride=4)
  )(variables, x)
  assert out.shape == (1, 8, 8)


def test_chunks_are_even():
  from medseg_jax.explain import batching

  assert batching.chunk_size(16, 49) == 13  # 4 chunks, 3 padded items
  assert batching.chunk_size(16, 225) == 15
  assert batching.chunk_size(16, 32) == 16
  assert batching.chunk_size(16, 3) == 3
  assert batching.chunk_size(None, 7) == 7
  with pytest.raises(ValueError, match="batch_size"):
    batching.chunk_size(0, 7)


@pytest.mark.parametrize("unroll", [False, True])
def test_map_in_chunks_unrolled_or_looped_gives_every_item(unroll):
  from medseg_jax.explain import batching

  items = dict(a=jnp.arange(11.0), b=jnp.arange(22.0).reshape(11, 2))
  calls = []

  def fn(chunk):
    calls.append(chunk["a"].shape[0])
    return chunk["a"] * 2 + chunk["b"].sum(1)

  jaxpr = jax.make_jaxpr(
    lambda t: batching.map_in_chunks(fn, t, 4, unroll=unroll)
  )(items)
  out = batching.map_in_chunks(fn, items, 4, unroll=unroll)
  np.testing.assert_allclose(out, np.arange(11.0) * 2 + np.arange(11) * 4 + 1)
  # Unrolled: one traced body per chunk (3 chunks of 4), no loop.
  has_loop = any(e.primitive.name in ("scan", "while") for e in jaxpr.eqns)
  assert has_loop == (not unroll)
  assert (len(calls) == 3 * 2) == unroll  # traced per chunk, twice
