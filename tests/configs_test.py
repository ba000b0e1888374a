"""Every config file loads, in every documented variant, with valid names."""

import importlib
import pathlib

import pytest

from medseg_jax import augment
from medseg_jax import losses
from medseg_jax import models
from medseg_jax import optimizers
from medseg_jax.data import registry
from medseg_jax.data import transforms

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(
  p.stem
  for p in CONFIG_DIR.glob("*.py")
  if p.stem not in ("__init__", "common")
)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_config_loads_with_valid_names(name, arg, tmp_path):
  module = importlib.import_module(f"configs.{name}")
  assert "--config=configs/" in module.__doc__, "docstring needs its command"
  if name == "unet_folder":  # Needs a data folder.
    from medseg_jax.data.from_folder import dummy_data

    folder = dummy_data.make_dummy_data(tmp_path, fmt="png")
    arg = ",".join(filter(None, [f"folder={folder}", arg]))
  config = module.get_config(arg)
  assert config.model.name in models.MODELS
  assert config.loss.name in losses.LOSSES
  assert config.optimizer.name in optimizers.OPTIMIZERS
  assert config.optimizer.schedule in optimizers.SCHEDULES
  spec = registry.get_dataset_spec(config.dataset, config.manual_dir)
  assert len(config.data.patch_size) == spec.spatial_dims
  # Both lists resolve: grain transforms (crop size = the patch) and the
  # augmentation ops, traced on the patch shape.
  transforms.build(
    [
      {"size": config.data.patch_size, **s}
      if s["op"] == "random_crop_or_pad"
      else s
      for s in config.data.train_transforms
    ]
  )
  augment.build(config.augment, spatial_shape=config.data.patch_size)


def test_unknown_config_argument_lists_valid_ones():
  from configs import unet_synthetic

  with pytest.raises(ValueError, match="runlocal"):
    unet_synthetic.get_config("fastest")


def _zoo_cases():
  from configs import zoo

  for model, (_, dims) in sorted(zoo.MODELS.items()):
    for data, make in sorted(zoo.DATA.items()):
      if len(make().data.patch_size) in dims:
        yield f"model={model},data={data}"


@pytest.mark.parametrize("arg", list(_zoo_cases()))
def test_zoo_presets_build_their_model(arg):
  """Every zoo preset's model traces on a small input of its data's rank."""
  import jax
  import jax.numpy as jnp

  from configs import zoo

  config = zoo.get_config(arg + ",runlocal")
  spec = registry.get_dataset_spec(config.dataset)
  model = models.from_config(config, spec)
  size = (32,) * spec.spatial_dims
  x = jnp.zeros((1, *size, spec.num_channels))
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), x, train=False)
  )
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.shape == (1, *size, spec.num_classes)


def test_isbi_slices_and_augment_arguments():
  from configs import unet_isbi2012

  config = unet_isbi2012.get_config("slices=6,augment=elastic")
  assert config.train_split == "train[:6]"
  # The named list comes after the base config's flips.
  assert [s["op"] for s in config.augment] == ["flip", "elastic"]
  augment.build(config.augment, spatial_shape=config.data.patch_size)
  assert [s["op"] for s in unet_isbi2012.get_config("slices=6").augment] == [
    "flip"
  ]
  with pytest.raises(ValueError, match="elastic"):
    unet_isbi2012.get_config("augment=swirl")
  with pytest.raises(ValueError, match="percent"):
    unet_isbi2012.get_config("slices=6,fold=1")
