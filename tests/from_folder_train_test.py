"""End to end: a user's folder -> dataset.json -> build -> train -> eval."""

import pytest

from configs import unet_folder
from medseg_jax import train
from medseg_jax.data.from_folder import dummy_data


@pytest.mark.slow
@pytest.mark.parametrize(
  ("fmt", "patch", "channels"), [("nifti", 8, 2), ("png", 16, 3)]
)
def test_trains_on_a_folder(tmp_path, fmt, patch, channels):
  folder = dummy_data.make_dummy_data(tmp_path / "raw", fmt=fmt, num_cases=4)
  config = unet_folder.get_config(f"folder={folder},patch={patch},runlocal")
  config.data_dir = str(tmp_path / "tfds")
  config.num_train_steps = 4
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 4
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert 0.0 <= summary["mean_foreground_dice"] <= 1.0
  assert (tmp_path / "run" / "eval").is_dir()


def test_missing_folder_argument_is_explained():
  with pytest.raises(ValueError, match="folder="):
    unet_folder.get_config("")
