"""Tests for medseg_jax.augment.registry: build, validation, the pipeline."""

import dataclasses
import inspect
import itertools
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from medseg_jax import augment
from medseg_jax.augment import sampling
from medseg_jax.augment import spatial

SHAPES = {2: (16, 16), 3: (8, 8, 8)}
ALL_OPS = [
  dict(op="flip", p=0.5),
  dict(op="rot90", p=0.5),
  dict(op="affine", p=0.5, rotation=(-20, 20), translation=(-0.1, 0.1)),
  dict(op="elastic", p=0.5, magnitude=(0, 2), grid=4),
  dict(op="gamma", p=0.5, gamma=(0.7, 1.5)),
  dict(op="brightness", p=0.5, delta=(-0.1, 0.1)),
  dict(op="contrast", p=0.5),
  dict(op="noise", p=0.5, sigma=(0, 0.1)),
  dict(op="blur", p=0.5, sigma=(0.5, 1.0)),
  dict(op="low_resolution", p=0.5, factor=(1, 2), order="linear"),
]


def _batch(dims: int, size: int = 4, seed: int = 0) -> dict[str, jax.Array]:
  shape = SHAPES[dims]
  k1, k2 = jax.random.split(jax.random.key(seed))
  label = jax.random.randint(k1, (size, *shape), 0, 4)
  image = jax.random.normal(k2, (size, *shape, 2))
  mask = jnp.ones((size, *shape)).at[:, -2:].set(0.0)
  return {"image": image, "label": label, "mask": mask}


def _assert_equal(a, b):
  for k in ("image", "label", "mask"):
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), k)


def _differs(a, b) -> bool:
  return any(
    not np.array_equal(np.asarray(a[k]), np.asarray(b[k]))
    for k in ("image", "label", "mask")
  )


def test_registry_lists_every_op_and_defaults_match_signatures():
  assert set(augment.AUGMENTATIONS) == {
    "flip",
    "rot90",
    "affine",
    "elastic",
    "gamma",
    "brightness",
    "contrast",
    "noise",
    "blur",
    "low_resolution",
    "corruption",
  }
  for name, spec in augment.AUGMENTATIONS.items():
    signature = inspect.signature(spec.fn)
    assert list(signature.parameters)[:2] == ["key", "example"], name
    options = dict(list(signature.parameters.items())[2:])
    assert set(options) == set(spec.params), name
    for key, param in spec.params.items():
      # The registry default is what the function itself defaults to.
      default = options[key].default
      assert augment.registry._normalise(
        param, default
      ) == augment.registry._normalise(param, param.default), (name, key)


@pytest.mark.parametrize("dims", [2, 3])
def test_p_zero_is_the_identity_for_every_op_and_the_list(dims):
  batch = _batch(dims)
  key = jax.random.key(0)
  zero = [{**spec, "p": 0.0} for spec in ALL_OPS]
  for spec in zero:
    _assert_equal(jax.jit(augment.build([spec]))(key, batch), batch)
  _assert_equal(jax.jit(augment.build(zero))(key, batch), batch)
  _assert_equal(augment.build([])(key, batch), batch)


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_whole_list_under_jit_and_vmap(dims):
  batch = _batch(dims, size=6)
  pipeline = augment.build(ALL_OPS, spatial_shape=SHAPES[dims])
  run = jax.jit(pipeline)
  key = jax.random.key(7)
  out = run(key, batch)
  # Deterministic: the same key gives the same batch, bit for bit.
  _assert_equal(run(key, batch), out)
  # Another key gives another batch.
  assert _differs(run(jax.random.key(8), batch), out)
  # Per-example draws: examples are independent, labels keep their values.
  for b in range(6):
    assert set(np.unique(out["label"][b])) <= set(range(4))
  # The batch call is vmap of augment_example over split keys, so the host
  # path (one example at a time, numpy in) reproduces it.
  keys = jax.random.split(key, 6)
  one = jax.jit(pipeline.augment_example)
  for b in (0, 5):
    example = {k: np.asarray(v[b]) for k, v in batch.items()}
    single = one(keys[b], example)
    np.testing.assert_array_equal(single["label"], out["label"][b])
    np.testing.assert_array_equal(single["mask"], out["mask"][b])
    np.testing.assert_allclose(
      single["image"], out["image"][b], rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow
def test_probability_selects_whole_examples():
  # p = 0.5 over 16 examples: untouched ones are bit-identical, the others
  # are changed (the op always changes an example when applied).
  batch = _batch(2, size=16)
  out = augment.build([dict(op="noise", p=0.5, sigma=(0.5, 1))])(
    jax.random.key(1), batch
  )
  same = [np.array_equal(out["image"][b], batch["image"][b]) for b in range(16)]
  assert 2 <= sum(same) <= 14


def test_numpy_example_on_the_host_keeps_dtypes_and_extra_keys():
  rng = np.random.default_rng(0)
  example = {
    "image": rng.normal(size=(16, 16, 1)).astype(np.float32),
    "label": rng.integers(0, 3, size=(16, 16)).astype(np.uint8),
    "id": "case_001",
  }
  pipeline = augment.build([dict(op="affine", p=1.0, rotation=(10, 20))])
  out = pipeline.augment_example(jax.random.key(0), example)
  assert out["id"] == "case_001"
  assert out["label"].dtype == np.uint8
  assert out["image"].dtype == np.float32
  assert out["mask"].dtype == np.float32  # added: ones, then transformed
  assert set(np.unique(out["mask"])) <= {0.0, 1.0}
  assert set(np.unique(out["label"])) <= {0, 1, 2}


def _flips_of(example, out) -> tuple[int, ...]:
  """The axes along which `out` is `example` flipped (brute force)."""
  dims = example["label"].ndim
  for count in range(dims + 1):
    for axes in itertools.combinations(range(dims), count):
      if all(
        np.array_equal(np.flip(np.asarray(example[k]), axes), out[k])
        for k in ("image", "label", "mask")
      ):
        return axes
  raise AssertionError("not a flip of the input")


@pytest.mark.slow
def test_legacy_uint32_keys_work():
  batch = _batch(2, size=16)
  pipeline = augment.build([dict(op="flip", p=1.0, axis_p=0.5)])
  raw = jax.random.PRNGKey(0)
  out = jax.tree.map(np.asarray, pipeline(raw, batch))
  # A raw uint32[2] key is the typed key with the same bits.
  _assert_equal(out, pipeline(jax.random.wrap_key_data(raw), batch))
  # Example b is flipped with the draws of split(key, B)[b]: image, label
  # and mask along the same axes, the axes differing between examples.
  keys = jax.random.split(raw, 16)
  drawn = set()
  for b in range(16):
    example = {k: v[b] for k, v in batch.items()}
    axes = _flips_of(example, {k: out[k][b] for k in example})
    single = pipeline.augment_example(keys[b], example)
    assert _flips_of(example, jax.tree.map(np.asarray, single)) == axes
    drawn.add(axes)
  assert len(drawn) == 4  # None, 0, 1, both: per-example draws.


def test_augment_is_picklable_and_hashable():
  pipeline = augment.build(ALL_OPS)
  restored = pickle.loads(pickle.dumps(pipeline))
  assert restored == pipeline
  assert hash(restored) == hash(pipeline)
  assert pipeline.ops == tuple(spec["op"] for spec in ALL_OPS)


@pytest.mark.parametrize(
  ("spec", "match"),
  [
    (dict(op="zoom", p=0.5), r"unknown augmentation op 'zoom'.*'elastic'"),
    # The grain pipeline's old name: the message gives the replacement.
    (
      dict(op="random_flip", p=0.5),
      r"'random_flip'.*'flip'.*removed; use dict\(op='flip'.*axis_p",
    ),
    # Pipeline ops are not augmentations: the message says where they go.
    (dict(op="normalize"), r"'normalize'.*config\.data\.train_transforms"),
    (dict(op="random_crop_or_pad"), r"'random_crop_or_pad'.*train_transforms"),
    (dict(p=0.5), "missing 'op'"),
    (dict(op="gamma", p=1.5), r"'gamma': p=1\.5 must be a probability"),
    (dict(op="gamma", p=-0.1), r"'gamma': p=-0\.1"),
    (dict(op="gamma", p=0.5, gamma=(1.5, 0.7)), "gamma=.*low > high"),
    (dict(op="gamma", p=0.5, gamma=(0.0, 1.0)), r"gamma=.*> 0\.0"),
    (dict(op="blur", p=0.5, sigma=(-1.0, 1.0)), "'blur'.*sigma=.*bounds"),
    (dict(op="noise", sigma=(-0.1, 0.1)), "'noise'.*sigma"),
    (dict(op="elastic", magnitude=(0, 8), grd=6), r"no option\(s\) \['grd'\]"),
    (dict(op="elastic", grid=1), "'elastic'.*grid=1"),
    (dict(op="elastic", magnitude=5), r"expected a \(low, high\) pair"),
    (dict(op="low_resolution", factor=(0.5, 2)), "'low_resolution'.*factor"),
    (dict(op="low_resolution", order="cubic"), r"one of \['nearest'"),
    (dict(op="affine", scale=(0.0, 1.0)), "'affine'.*scale"),
    (dict(op="affine", rotation=((0, 1), (3, 2))), "low > high"),
    (dict(op="flip", axes=(0, 0)), "distinct"),
    (dict(op="flip", axis_p=2.0), "axis_p"),
    (dict(op="rot90", planes=((0,),)), "plane"),
    (dict(op="contrast", per_channel="yes"), "True or False"),
  ],
)
def test_bad_specs_fail_at_build_time(spec, match):
  with pytest.raises(ValueError, match=match) as info:
    augment.build([dict(op="flip", p=0.5), spec])
  if "op" in spec and spec["op"] in augment.AUGMENTATIONS:
    assert "augmentations[1]" in str(info.value)
    assert "Valid keys" in str(info.value)  # the message lists the options
    assert "p: probability" in str(info.value)


def test_bad_list_types():
  with pytest.raises(ValueError, match="list of dict"):
    augment.build(dict(op="flip"))
  with pytest.raises(ValueError, match="expected dict"):
    augment.build(["flip"])


def test_shape_dependent_errors_at_build_time_with_spatial_shape():
  rot = [dict(op="rot90", p=0.5, planes=((0, 1),))]
  augment.build(rot)  # fine without a shape
  augment.build(rot, spatial_shape=(16, 16))
  with pytest.raises(ValueError, match="square"):
    augment.build(rot, spatial_shape=(16, 12))
  with pytest.raises(ValueError, match="grid"):
    augment.build([dict(op="elastic", grid=(4, 4))], spatial_shape=(8, 8, 8))
  with pytest.raises(ValueError, match="rotation"):
    augment.build(
      [dict(op="affine", rotation=((0, 1), (0, 1)))], spatial_shape=(8, 8, 8)
    )
  with pytest.raises(ValueError, match="axis 2"):
    augment.build([dict(op="flip", axes=(2,))], spatial_shape=(8, 8))
  # Every op traces on 2-D and 3-D shapes; p=0 ops are checked too.
  zero = [{**spec, "p": 0.0} for spec in ALL_OPS]
  augment.build(zero, spatial_shape=(8, 8))
  augment.build(zero, spatial_shape=(4, 8, 8))
  with pytest.raises(ValueError, match="square"):
    augment.build(
      [dict(op="rot90", p=0.0, planes=((0, 1),))], spatial_shape=(4, 8, 8)
    )


def test_bad_example_shapes():
  pipeline = augment.build([dict(op="flip")])
  with pytest.raises(ValueError, match="channels last"):
    pipeline.augment_example(
      jax.random.key(0),
      {"image": np.zeros((8, 8)), "label": np.zeros((8, 8), np.int32)},
    )


def _smooth_batch(dims: int, size: int = 4) -> dict[str, jax.Array]:
  """Smooth image (interpolation is nearly exact) and blob labels."""
  shape = (32, 32) if dims == 2 else (16, 16, 16)
  axes = np.indices(shape) / np.asarray(shape).reshape(-1, *[1] * dims)
  image = np.sin(3 * axes[0]) + np.cos(2 * axes[1]) + axes.sum(0)
  label = (np.sum((axes - 0.4) ** 2, axis=0) < 0.08).astype(np.int32)
  label += (np.abs(axes[0] - 0.75) < 0.1).astype(np.int32) * 2
  batch = {"image": image[..., None], "label": label}
  return {
    k: jnp.stack([jnp.asarray(v, jnp.float32 if k == "image" else None)] * size)
    for k, v in batch.items()
  }


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_point_forms_of_flip_and_rot90_are_the_ops(dims):
  # Resampling at the mapped integer positions is the exact permutation.
  batch = _batch(dims, size=1)
  example = {k: v[0] for k, v in batch.items()}
  shape = SHAPES[dims]
  grid = sampling.identity_grid(shape)
  forms = [
    (spatial.flip, spatial.flip_points),
    (spatial.rot90, spatial.rot90_points),
  ]
  for op, points in forms:
    for seed in range(8):
      key = jax.random.key(seed)
      moved = sampling.resample(example, points(key, grid, shape))
      _assert_equal(moved, op(key, example))


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_permutations_then_identity_affine_compose_exactly(dims):
  # Flip then rot90 do not commute: a wrong composition order shows here.
  ops = [
    dict(op="flip", p=1.0),
    dict(op="rot90", p=1.0),
    dict(op="affine", p=1.0, rotation=(0, 0), scale=(1, 1)),
  ]
  pipeline = augment.build(ops)
  separate = dataclasses.replace(pipeline, fuse=False)
  batch = _batch(dims, size=8)
  fused = jax.jit(pipeline)(jax.random.key(4), batch)
  _assert_equal(fused, jax.jit(separate)(jax.random.key(4), batch))
  assert _differs(fused, batch)


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_one_resampling_matches_resampling_after_every_op(dims):
  ops = [
    dict(op="flip", p=0.5),
    dict(op="rot90", p=0.5),
    dict(op="affine", p=0.8, rotation=(-30, 30), scale=(0.9, 1.1)),
    dict(op="elastic", p=0.8, magnitude=(1, 2), grid=4),
  ]
  pipeline = augment.build(ops)
  batch = _smooth_batch(dims, size=6)
  fused = jax.jit(pipeline)(jax.random.key(1), batch)
  separate = jax.jit(dataclasses.replace(pipeline, fuse=False))(
    jax.random.key(1), batch
  )
  label, reference = np.asarray(fused["label"]), np.asarray(separate["label"])
  assert np.mean(label != np.asarray(batch["label"])) > 0.05  # They moved ...
  # ... to the same place: repeated nearest-neighbour rounding may move a
  # boundary by a voxel, but a voxel inside a region keeps its label.
  window = (1,) + (3,) * dims
  boundary = ndimage.maximum_filter(reference, window) != (
    ndimage.minimum_filter(reference, window)
  )
  assert np.mean((label != reference) & ~boundary) < 0.005
  inside = np.asarray(fused["mask"] * separate["mask"]) > 0
  diff = np.abs(np.asarray(fused["image"] - separate["image"]))[..., 0]
  assert np.median(diff[inside]) < 0.01


@pytest.mark.slow
def test_elastic_closes_a_run_so_a_later_affine_resamples_again():
  ops = [
    dict(op="elastic", p=1.0, magnitude=(1, 2), grid=4),
    dict(op="affine", p=1.0, rotation=(-30, 30)),
  ]
  pipeline = augment.build(ops)
  batch = _smooth_batch(2)
  _assert_equal(
    jax.jit(pipeline)(jax.random.key(2), batch),
    jax.jit(dataclasses.replace(pipeline, fuse=False))(
      jax.random.key(2), batch
    ),
  )
