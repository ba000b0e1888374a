"""Tests for init_from merging, parameter groups and frozen training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medseg_jax import checkpointing
from medseg_jax import train
from medseg_jax import transfer
from medseg_jax.models import unet
from tests import train_test


def _params(num_classes=4, in_channels=1, seed=0):
  model = unet.UNet(num_classes=num_classes, features=(4, 8), norm="none")
  x = jnp.zeros((1, 16, 16, in_channels))
  return model.init(jax.random.key(seed), x, train=False)["params"]


@pytest.mark.slow
def test_merge_loads_everything_when_shapes_match():
  source, target = _params(seed=1), _params(seed=2)
  merged, report = transfer.merge(target, source)
  assert not report.reinitialised and not report.unused
  for a, b in zip(
    jax.tree.leaves(merged), jax.tree.leaves(source), strict=True
  ):
    np.testing.assert_array_equal(a, b)


def test_merge_reinitialises_and_reports_class_and_channel_mismatch():
  source = _params(num_classes=4, in_channels=1, seed=1)
  target = _params(num_classes=2, in_channels=3, seed=2)
  merged, report = transfer.merge(target, source)
  mismatched = {name for name, _, _ in report.shape_mismatch}
  assert mismatched == {"head/kernel", "head/bias", "down_0/conv_0/kernel"}
  flat_merged, flat_target = transfer.flatten(merged), transfer.flatten(target)
  flat_source = transfer.flatten(source)
  for name in mismatched:
    np.testing.assert_array_equal(flat_merged[name], flat_target[name])
  np.testing.assert_array_equal(
    flat_merged["up_0/conv_1/kernel"], flat_source["up_0/conv_1/kernel"]
  )
  assert "shape mismatch head/kernel" in report.summary()


def test_merge_include_exclude_and_rename():
  source = {"enc/" + k: v for k, v in transfer.flatten(_params(seed=1)).items()}
  target = _params(seed=2)
  merged, report = transfer.merge(
    target, source, rename=[("^", "enc/")], exclude=["^head/"]
  )
  assert set(report.excluded) == {"head/kernel", "head/bias"}
  assert not report.missing
  np.testing.assert_array_equal(
    transfer.flatten(merged)["down_0/conv_0/kernel"],
    source["enc/down_0/conv_0/kernel"],
  )
  _, report = transfer.merge(target, source, include=["^up_"])
  assert report.missing and all(n.startswith("up_") for n in report.missing)


def test_frozen_group_gets_zero_updates_and_scaled_group_smaller_ones():
  params = _params()
  groups = [
    dict(pattern="^down_", freeze=True),
    dict(pattern="^up_", lr_scale=0.1),
  ]
  tx = transfer.grouped_optimizer(
    lambda s: optax.sgd(s), optax.constant_schedule(1.0), groups
  )
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat = transfer.flatten(updates)
  assert all(np.all(v == 0) for k, v in flat.items() if k.startswith("down_"))
  np.testing.assert_allclose(flat["up_0/conv_0/kernel"], -0.1)
  np.testing.assert_allclose(flat["head/bias"], -1.0)


def test_group_pattern_that_matches_nothing_is_an_error():
  with pytest.raises(ValueError, match="matches no parameter"):
    transfer.check_groups(_params(), [dict(pattern="^encoder/", freeze=True)])


@pytest.mark.slow
@pytest.mark.long
def test_init_from_loads_weights_and_frozen_layers_stay_bit_identical(
  synthetic_2d_dir, tmp_path
):
  source_dir, target_dir = tmp_path / "source", tmp_path / "target"
  train.train_and_evaluate(
    train_test.tiny_config(synthetic_2d_dir, num_train_steps=3), str(source_dir)
  )
  source, _ = checkpointing.load_params(source_dir)
  config = train_test.tiny_config(
    synthetic_2d_dir, num_train_steps=3, seed=7, init_from=str(source_dir)
  )
  config.init_exclude = ["^head/"]
  config.optimizer.param_groups = [
    dict(pattern="^(down_|bottleneck)", freeze=True)
  ]
  train.train_and_evaluate(config, str(target_dir))
  report = (target_dir / "init_from_report.txt").read_text()
  assert "excluded: head/kernel" in report
  trained = transfer.flatten(checkpointing.load_params(target_dir)[0])
  flat_source = transfer.flatten(source)
  for name, value in trained.items():
    if name.startswith(("down_", "bottleneck")):
      np.testing.assert_array_equal(value, flat_source[name], err_msg=name)
    elif name.startswith("up_0/conv_0"):
      assert not np.array_equal(value, flat_source[name])  # It trained.


@pytest.mark.slow
@pytest.mark.long
def test_init_from_torchvision_state_dict_fills_the_backbone(
  synthetic_2d_dir, tmp_path
):
  from tests.models import torchvision_import_test

  width = 1 / 16
  state = torchvision_import_test.fake_state_dict(18, width=width)
  path = tmp_path / "resnet18_fake.npz"
  np.savez(path, **state)
  config = train_test.tiny_config(synthetic_2d_dir, num_train_steps=1)
  config.model = dict(
    name="deeplabv3", backbone="resnet18", width=width, aspp_features=8
  )
  config.data.pad_multiple = 1
  config.init_from = str(path)
  config.optimizer.param_groups = [dict(pattern="^backbone/", freeze=True)]
  train.train_and_evaluate(config, str(tmp_path / "run"))
  params = transfer.flatten(checkpointing.load_params(tmp_path / "run")[0])
  # conv1 of the RGB source is summed over its input channels for 1 channel.
  expected = (
    state["conv1.weight"].sum(axis=1, keepdims=True).transpose(2, 3, 1, 0)
  )
  np.testing.assert_allclose(
    params["backbone/conv1/kernel"], expected, rtol=1e-6
  )
  report = (tmp_path / "run" / "init_from_report.txt").read_text()
  assert "fc.weight" in report
