"""Tests for the device mesh, batch placement and depth-sharded activations.

The multi-device tests run on the suite's 8 fake CPU devices (the
``eight_devices`` fixture of tests/conftest.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import unet3d_synthetic
from configs import unet_synthetic
from medseg_jax import models
from medseg_jax import sharding
from medseg_jax.data import registry
from medseg_jax.models import UNet
from medseg_jax.models import VNet

# ---------------------------------------------------------------------------
# Mesh shapes (no devices needed).
# ---------------------------------------------------------------------------


def test_mesh_shape_default_is_one_data_axis():
  assert sharding.mesh_shape(None, 8) == {"data": 8}
  assert sharding.mesh_shape({"data": -1, "spatial": 1}, 8) == {"data": 8}


@pytest.mark.parametrize(
  "axes, expected",
  [
    ({"data": -1, "spatial": 4}, {"data": 2, "spatial": 4}),
    ({"data": 2, "spatial": -1}, {"data": 2, "spatial": 4}),
    ({"data": 1, "spatial": 8}, {"data": 1, "spatial": 8}),
    ({"spatial": 8}, {"data": 1, "spatial": 8}),
  ],
)
def test_mesh_shape_resolves_the_free_axis(axes, expected):
  shape = sharding.mesh_shape(axes, 8)
  assert shape == expected
  assert list(shape) == [a for a in sharding.MESH_AXES if a in shape]


@pytest.mark.parametrize(
  "axes, match",
  [
    ({"data": -1, "model": 2}, "Unknown mesh axes"),
    ({"data": -1, "spatial": 3}, "does not divide"),
    ({"data": 2, "spatial": 2}, "has 4 devices"),
    ({"data": -1, "spatial": -1}, "at most one -1"),
    ({"data": 0}, "positive"),
  ],
)
def test_mesh_shape_rejects_bad_axes(axes, match):
  with pytest.raises(ValueError, match=match):
    sharding.mesh_shape(axes, 8)


def test_every_config_keeps_the_plain_data_mesh():
  for module in (unet_synthetic, unet3d_synthetic):
    config = module.get_config()
    assert sharding.mesh_shape(config.mesh, 8) == {"data": 8}


def test_constrain_without_a_mesh_returns_the_input():
  x = jnp.ones((2, 4, 4, 4, 1))
  assert sharding.constrain(x, ("data", "spatial")) is x
  assert sharding.constrain(x, None) is x


def test_spatial_mesh_gives_3d_models_a_partition():
  config = unet3d_synthetic.get_config("runlocal")
  spec = registry.get_dataset_spec(config.dataset)
  assert models.from_config(config, spec).partition is None
  config.mesh.spatial = 2
  assert models.from_config(config, spec).partition == ("data", "spatial")
  config.model.name = "fcn"
  with pytest.raises(ValueError, match=r"support partition.*'unet'"):
    models.from_config(config, spec)


# ---------------------------------------------------------------------------
# Eight devices: depth-sharded 3-D models equal the unsharded ones.
# ---------------------------------------------------------------------------


def _forward_and_grads(model, variables, x, labels):
  def loss(params):
    logits, _ = model.apply(
      {**variables, "params": params},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[..., None], -1)), logits

  (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(
    variables["params"]
  )
  return value, logits, grads


def _unsharded_run(plain):
  """A 3-class [2, 16, 16, 16, 1] batch, variables, and `plain`'s results."""
  shape = (2, 16, 16, 16, 1)
  x = jax.random.normal(jax.random.key(0), shape)
  labels = jax.random.randint(jax.random.key(1), shape[:-1], 0, 3)
  variables = plain.init(jax.random.key(2), x, train=False)
  expected = jax.jit(lambda v, x, y: _forward_and_grads(plain, v, x, y))(
    variables, x, labels
  )
  return x, labels, variables, expected


@pytest.mark.slow
@pytest.mark.parametrize(
  "name, axes",
  [("unet", {"data": 2, "spatial": 4}), ("vnet", {"data": 1, "spatial": 8})],
  ids=["unet-data2-spatial4", "vnet-data1-spatial8"],
)
def test_depth_sharded_3d_model_equals_unsharded(name, axes, eight_devices):
  if name == "unet":
    make = lambda **kw: UNet(  # noqa: E731
      num_classes=3, features=(4, 8), spatial_dims=3, norm="batch", **kw
    )
  else:
    make = lambda **kw: VNet(  # noqa: E731
      num_classes=3, features=(4, 8), convs=(1, 1), kernel_size=3, **kw
    )
  x, labels, variables, expected = _unsharded_run(make())

  mesh = sharding.make_mesh(eight_devices, axes=axes)
  assert mesh.devices.size == 8
  sharded = make(partition=("data", "spatial"))
  step = jax.jit(lambda v, x, y: _forward_and_grads(sharded, v, x, y))
  batch = sharding.batch_sharding(mesh, spatial_dims=3)
  assert batch.spec == P("data", "spatial")
  x_s = jax.device_put(x, batch)
  y_s = jax.device_put(labels, batch)
  v_s = sharding.replicate(variables, mesh)
  with jax.set_mesh(mesh):
    got = step(v_s, x_s, y_s)
    compiled = step.lower(v_s, x_s, y_s).compile().as_text()

  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
    got,
    expected,
  )
  # The logits come out split over batch and depth ...
  logits = got[1]
  assert logits.sharding.is_equivalent_to(
    NamedSharding(mesh, P("data", "spatial")), logits.ndim
  )
  assert {s.data.shape for s in logits.addressable_shards} == {
    (2 // axes["data"], 16 // axes["spatial"], 16, 16, 3)
  }
  # ... and so are the activations inside: the partitioned program works on
  # per-device depth slabs of the full-resolution features (4 channels).
  slab = f"f32[{2 // axes['data']},{16 // axes['spatial']},16,16,4]"
  assert slab in compiled
  # No device ever holds a whole full-resolution feature map, also with an
  # unsplit batch: under a spatial mesh the convolutions do not use the
  # CPU's depth-stacked form (which folds depth into the batch axis and
  # made XLA regather volumes in the backward pass).
  whole = f"f32[{2 // axes['data']},16,16,16,4]"
  assert whole not in compiled


@pytest.mark.long
@pytest.mark.parametrize("name", ["unetr", "swin_unetr"])
def test_depth_sharded_transformer_equals_unsharded(name, eight_devices):
  # The transformers' token and window operations (reshapes into patches
  # and windows, rolls, global attention) must survive depth-split maps.
  tiny = {
    "unetr": dict(
      patch_size=4, hidden_size=16, mlp_dim=32, num_layers=2, num_heads=2
    ),
    "swin_unetr": dict(depths=(2,), num_heads=(2,), window_size=4),
  }[name]

  def make(**kw):
    return models.get_model(
      name, num_classes=3, spatial_dims=3, feature_size=4, **tiny, **kw
    )

  x, labels, variables, expected = _unsharded_run(make())
  mesh = sharding.make_mesh(eight_devices, axes={"data": 2, "spatial": 4})
  sharded = make(partition=("data", "spatial"))
  step = jax.jit(lambda v, x, y: _forward_and_grads(sharded, v, x, y))
  batch = sharding.batch_sharding(mesh, spatial_dims=3)
  with jax.set_mesh(mesh):
    got = step(
      sharding.replicate(variables, mesh),
      jax.device_put(x, batch),
      jax.device_put(labels, batch),
    )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
    got,
    expected,
  )
  assert got[1].sharding.is_equivalent_to(
    NamedSharding(mesh, P("data", "spatial")), 5
  )
