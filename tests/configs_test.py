"""Every config file loads, in every documented variant, with valid names."""

import importlib
import pathlib

import pytest

from medseg_jax import losses
from medseg_jax import models
from medseg_jax import optimizers
from medseg_jax.data import registry
from medseg_jax.data import transforms

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(
  p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common")
)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_config_loads_with_valid_names(name, arg):
  module = importlib.import_module(f"configs.{name}")
  assert "--config=configs/" in module.__doc__, "docstring needs its command"
  config = module.get_config(arg)
  assert config.model.name in models.MODELS
  assert config.loss.name in losses.LOSSES
  assert config.optimizer.name in optimizers.OPTIMIZERS
  assert config.optimizer.schedule in optimizers.SCHEDULES
  spec = registry.get_dataset_spec(config.dataset)
  assert len(config.data.patch_size) == spec.spatial_dims
  transforms.build(
    [s for s in config.data.train_transforms if s["op"] != "random_crop_or_pad"]
  )


def test_unknown_config_argument_lists_valid_ones():
  from configs import unet_synthetic

  with pytest.raises(ValueError, match="runlocal"):
    unet_synthetic.get_config("fastest")
