"""Tests for the model registry in medseg_jax.models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from medseg_jax import models

# Smallest working arguments per registered name; a new architecture must be
# added here, which the first test enforces.
TINY_KWARGS = {
  "unet": {"num_classes": 2, "features": (4, 8)},
  "attention_unet": {"num_classes": 2, "features": (4, 8)},
  "vnet": {
    "num_classes": 2,
    "features": (4, 8),
    "convs": (1, 1),
    "spatial_dims": 2,
  },
  "fcn": {"num_classes": 2, "width": 1 / 16},
  "deeplabv3": {
    "num_classes": 2,
    "backbone": "resnet18",
    "width": 1 / 16,
    "aspp_features": 8,
  },
  "deeplabv3plus": {
    "num_classes": 2,
    "backbone": "resnet18",
    "width": 1 / 16,
    "aspp_features": 8,
    "low_level_features": 4,
    "decoder_features": 8,
  },
  "resenc_unet": {
    "num_classes": 2,
    "features": (4, 8),
    "blocks_per_stage": (1, 1),
  },
  "mednext": {
    "num_classes": 2,
    "base_features": 4,
    "expansion": (2, 2, 2),
    "blocks": (1, 1, 1),
  },
  "unetr": {
    "num_classes": 2,
    "spatial_dims": 2,
    "patch_size": 4,
    "hidden_size": 16,
    "mlp_dim": 32,
    "num_layers": 2,
    "num_heads": 2,
    "feature_size": 4,
  },
  "swin_unetr": {
    "num_classes": 2,
    "spatial_dims": 2,
    "feature_size": 6,
    "depths": (2,),
    "num_heads": (2,),
    "window_size": 4,
  },
}


def test_every_model_has_tiny_kwargs():
  assert set(TINY_KWARGS) == set(models.MODELS)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_builds_and_runs(name):
  model = models.get_model(name, **TINY_KWARGS[name])
  assert isinstance(model, nn.Module)
  x = jnp.zeros((1, 16, 16, 1))
  variables = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), x
  )
  out = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False), variables, x
  )
  assert out.shape == (1, 16, 16, TINY_KWARGS[name]["num_classes"])


def test_kwargs_are_forwarded():
  model = models.get_model(
    "unet", num_classes=5, features=(8, 16, 32), spatial_dims=3
  )
  assert isinstance(model, models.UNet)
  assert (model.num_classes, tuple(model.features)) == (5, (8, 16, 32))
  assert model.spatial_dims == 3


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="valid names") as info:
    models.get_model("unet++", num_classes=2)
  for name in models.MODELS:
    assert name in str(info.value)


@pytest.mark.parametrize(
  "fields, expected",
  [
    (dict(name="unet", features=(8, 16, 32)), 4),
    (dict(name="resenc_unet", features=(4, 8, 16, 32)), 8),
    (dict(name="resenc_unet", preset="M"), 128),  # 8 stages in 2-D.
    (dict(name="mednext", size="S"), 16),
    (dict(name="mednext", blocks=(1, 1, 1), expansion=(2, 2, 2)), 2),
  ],
)
def test_pad_multiple_follows_the_model(fields, expected):
  config = ml_collections.ConfigDict(
    {"model": fields, "data": {"pad_multiple": 0, "patch_size": (64, 64)}}
  )
  assert models.pad_multiple(config) == expected
