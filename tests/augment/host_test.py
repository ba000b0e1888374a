"""Tests for medseg_jax.augment.host: the augmentations in the grain pipeline."""

import itertools
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from configs import unet_synthetic
from medseg_jax import augment
from medseg_jax.data import pipeline

OPS = [
  dict(op="flip", p=0.5),
  dict(op="rot90", p=0.5),
  dict(op="affine", p=0.7, rotation=(-20, 20), translation=(-0.1, 0.1)),
  dict(op="elastic", p=0.7, magnitude=(0, 3), grid=4),
  dict(op="gamma", p=0.5, gamma=(0.7, 1.5)),
  dict(op="noise", p=0.5, sigma=(0, 0.1)),
]


def _config(data_dir, augment_on="host", ops=OPS, **data):
  config = unet_synthetic.get_config("runlocal")
  config.data_dir = str(data_dir)
  config.data.patch_size = (32, 32)
  for key, value in data.items():
    config.data[key] = value
  config.augment = [dict(spec) for spec in ops]
  config.augment_on = augment_on
  return config


def _batches(config, count, state=None, **kwargs):
  dataset = pipeline.train_dataset(
    config, config.data_dir, local_batch_size=4, **kwargs
  )
  iterator = iter(dataset)
  if state is not None:
    iterator.set_state(state)
  return [next(iterator) for _ in range(count)], iterator


def _assert_same(a, b):
  for name in ("image", "label", "mask"):
    np.testing.assert_array_equal(a[name], b[name], name)


@pytest.mark.slow
def test_augment_on_is_validated(synthetic_2d_dir):
  assert augment.check_augment_on("host") == "host"
  assert augment.check_augment_on("device") == "device"
  for bad in ("cpu", "HOST", None):
    with pytest.raises(ValueError, match="'device'.*'host'"):
      augment.check_augment_on(bad)
  with pytest.raises(ValueError, match="augment_on='gpu'"):
    pipeline.train_dataset(
      _config(synthetic_2d_dir, augment_on="gpu"),
      str(synthetic_2d_dir),
      local_batch_size=4,
    )


@pytest.mark.slow
def test_host_batches_are_the_device_augmentation_of_the_plain_batches(
  synthetic_2d_dir,
):
  # "device" leaves the pipeline's batches alone; the train step would
  # augment batch t with step_key(seed, t). The host pipeline must produce
  # exactly that.
  plain, _ = _batches(_config(synthetic_2d_dir, augment_on="device"), 3)
  host, _ = _batches(_config(synthetic_2d_dir), 3)
  on_device = jax.jit(augment.build(OPS))
  changed = 0
  for step, (p, h) in enumerate(zip(plain, host, strict=True)):
    expected = on_device(augment.step_key(0, step), p)
    np.testing.assert_array_equal(h["label"], expected["label"])
    np.testing.assert_array_equal(h["mask"], expected["mask"])
    np.testing.assert_allclose(h["image"], expected["image"], atol=1e-5)
    assert h["image"].dtype == np.float32 and h["label"].dtype == np.int32
    assert h["image"].shape == p["image"].shape
    changed += not np.array_equal(h["image"], p["image"])
    # Labels keep their values: nearest neighbour, 0 from outside.
    assert set(np.unique(h["label"])) <= set(np.unique(p["label"])) | {0}
  assert changed == 3  # 4 examples, 6 ops: some op fires in every batch.


@pytest.mark.slow
def test_same_seed_and_position_same_batch_other_seed_other_batch(
  synthetic_2d_dir,
):
  config = _config(synthetic_2d_dir)
  first, _ = _batches(config, 2)
  again, _ = _batches(config, 2)
  for a, b in zip(first, again, strict=True):
    _assert_same(a, b)
  config.seed = 1
  other, _ = _batches(config, 1)
  assert not np.array_equal(other[0]["image"], first[0]["image"])


@pytest.mark.slow
def test_p_zero_is_the_identity(synthetic_2d_dir):
  plain, _ = _batches(_config(synthetic_2d_dir, augment_on="device"), 2)
  zero = [{**spec, "p": 0.0} for spec in OPS]
  host, _ = _batches(_config(synthetic_2d_dir, ops=zero), 2)
  for a, b in zip(plain, host, strict=True):
    _assert_same(a, b)


@pytest.mark.slow
def test_restored_iterator_replays_the_same_augmented_batches(
  synthetic_2d_dir,
):
  config = _config(synthetic_2d_dir)
  straight, _ = _batches(config, 4)
  _, iterator = _batches(config, 2)
  state = iterator.get_state()
  # A new pipeline (as after a restart), positioned by the saved state.
  resumed, _ = _batches(config, 2, state=state)
  for a, b in zip(straight[2:], resumed, strict=True):
    _assert_same(a, b)


@pytest.mark.slow
def test_each_process_augments_its_rows_of_the_global_batch(synthetic_2d_dir):
  config = _config(synthetic_2d_dir)
  plain = _config(synthetic_2d_dir, augment_on="device")
  on_device = jax.jit(augment.build(OPS))
  rows = {}
  for index in (0, 1):
    (host,), _ = _batches(config, 1, process_index=index, process_count=2)
    (raw,), _ = _batches(plain, 1, process_index=index, process_count=2)
    rows[index] = (host, raw)
  # The global batch is process 0's rows, then process 1's.
  global_raw = {
    k: np.concatenate([rows[0][1][k], rows[1][1][k]])
    for k in ("image", "label", "mask")
  }
  expected = on_device(augment.step_key(0, 0), global_raw)
  got = np.concatenate([rows[0][0]["label"], rows[1][0]["label"]])
  np.testing.assert_array_equal(got, expected["label"])


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(16, 16), (8, 12, 12)])
def test_host_transform_2d_and_3d_matches_the_batch_call(shape):
  key = jax.random.key(3)
  k1, k2 = jax.random.split(key)
  batch = {
    "image": np.asarray(jax.random.normal(k1, (3, *shape, 2))),
    "label": np.asarray(jax.random.randint(k2, (3, *shape), 0, 3)),
    "mask": np.ones((3, *shape), np.float32),
  }
  pipeline_ops = augment.build(OPS, spatial_shape=shape)
  transform = augment.HostAugment(pipeline_ops, seed=5, global_batch_size=3)
  # Picklable, for grain worker processes.
  transform = pickle.loads(pickle.dumps(transform))
  out = transform.map_with_index(7, batch)
  assert all(isinstance(out[k], np.ndarray) for k in ("image", "label"))
  expected = jax.jit(pipeline_ops)(augment.step_key(5, 7), batch)
  np.testing.assert_array_equal(out["label"], expected["label"])
  np.testing.assert_allclose(out["image"], expected["image"], atol=1e-5)
  other = transform.map_with_index(8, batch)
  assert not np.array_equal(other["image"], out["image"])
  assert jnp.asarray(out["label"]).dtype == batch["label"].dtype


@pytest.mark.slow
def test_worker_process_gives_the_same_batches(synthetic_2d_dir):
  # grain spawns the worker: the transform is pickled and JAX starts anew.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  in_process, _ = _batches(_config(synthetic_2d_dir), 2)
  workers = _config(synthetic_2d_dir, worker_count=1)
  dataset = pipeline.train_dataset(
    workers, workers.data_dir, local_batch_size=4
  )
  in_worker = list(itertools.islice(iter(dataset), 2))
  for a, b in zip(in_process, in_worker, strict=True):
    _assert_same(a, b)
