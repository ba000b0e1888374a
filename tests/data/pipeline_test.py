"""Tests for the grain training and evaluation pipelines."""

import itertools

import numpy as np
import pytest

from configs import unet_synthetic
from medseg_jax.data import pipeline


def _config(data_dir, **data):
  config = unet_synthetic.get_config("runlocal")
  config.data_dir = str(data_dir)
  config.data.patch_size = (32, 32)
  for key, value in data.items():
    config.data[key] = value
  return config


def _case_images(config, batches, **kwargs):
  dataset = pipeline.train_dataset(
    config, config.data_dir, local_batch_size=4, **kwargs
  )
  return [batch for batch in itertools.islice(iter(dataset), batches)]


def test_batches_have_the_documented_shapes(synthetic_2d_dir):
  (batch,) = _case_images(_config(synthetic_2d_dir), 1)
  assert batch["image"].shape == (4, 32, 32, 1)
  assert batch["image"].dtype == np.float32
  assert batch["label"].shape == (4, 32, 32)
  assert batch["label"].dtype == np.int32
  assert batch["mask"].shape == (4, 32, 32)


def test_same_seed_same_batches_other_seed_other_batches(synthetic_2d_dir):
  config = _config(synthetic_2d_dir)
  first = _case_images(config, 3)
  again = _case_images(config, 3)
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
  config.seed = 1
  other = _case_images(config, 3)
  assert not np.array_equal(first[0]["image"], other[0]["image"])


@pytest.mark.parametrize("percent", [25, 50])
def test_train_percent_keeps_a_prefix_of_the_split(synthetic_2d_dir, percent):
  # No augmentation: whole 128 x 128 images identify their case.
  config = _config(
    synthetic_2d_dir,
    train_percent=percent,
    patch_size=(128, 128),
    train_transforms=[dict(op="normalize", mode="none")],
  )
  full = _config(
    synthetic_2d_dir,
    patch_size=(128, 128),
    train_transforms=[dict(op="normalize", mode="none")],
  )
  full_source = pipeline.registry.data_source(
    full.dataset, full.train_split, full.data_dir
  )
  expected = round(len(full_source) * percent / 100)
  keys = {
    full_source[i]["image"].tobytes()[:4096]: i for i in range(len(full_source))
  }
  # Two epochs' worth of examples visit exactly the kept prefix.
  batches = _case_images(config, 2 * expected // 4 + 2)
  seen = {
    keys[image.tobytes()[:4096]]
    for batch in batches
    for image in batch["image"]
  }
  assert seen == set(range(expected))


def test_processes_read_disjoint_rows(synthetic_2d_dir):
  config = _config(
    synthetic_2d_dir,
    patch_size=(128, 128),
    train_transforms=[dict(op="normalize", mode="none")],
  )
  a = _case_images(config, 2, process_index=0, process_count=2)
  b = _case_images(config, 2, process_index=1, process_count=2)
  rows_a = {img.tobytes()[:4096] for batch in a for img in batch["image"]}
  rows_b = {img.tobytes()[:4096] for batch in b for img in batch["image"]}
  assert not rows_a & rows_b


def test_two_processes_read_the_rows_of_one_process(synthetic_2d_dir):
  # With the default random crops: process p's batch b is the
  # p-th half of one process's batch b, augmented the same way.
  config = _config(synthetic_2d_dir)
  whole = list(
    itertools.islice(
      iter(pipeline.train_dataset(config, config.data_dir, local_batch_size=8)),
      3,
    )
  )
  halves = [
    _case_images(config, 3, process_index=p, process_count=2) for p in (0, 1)
  ]
  for step, batch in enumerate(whole):
    for key in ("image", "label", "mask"):
      joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
      np.testing.assert_array_equal(joined, batch[key])


def test_eval_examples_are_shared_out_by_process(synthetic_2d_dir):
  config = _config(synthetic_2d_dir)

  def ids(**kwargs):
    return [
      e["case_id"]
      for e in pipeline.eval_examples(
        config, config.data_dir, "validation[:5]", pad_multiple=1, **kwargs
      )
    ]

  everything = ids()
  assert len(everything) == 5
  assert ids(process_index=0, process_count=2) == everything[0::2]
  assert ids(process_index=1, process_count=2) == everything[1::2]


def test_eval_examples_pad_and_keep_the_shape(synthetic_2d_dir):
  config = _config(synthetic_2d_dir)
  examples = list(
    itertools.islice(
      pipeline.eval_examples(
        config, config.data_dir, "validation", pad_multiple=48
      ),
      2,
    )
  )
  for example in examples:
    assert example["image"].shape == (144, 144, 1)
    assert example["shape"] == (128, 128)
    assert example["mask"].sum() == 128 * 128
    assert isinstance(example["case_id"], str)
