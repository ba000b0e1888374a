"""Tests for self-supervised pretraining (medseg_jax/train_ssl.py).

The step test calls the jitted step on a tiny U-Net in-process. The
end-to-end tests train on the synthetic phantoms (labels ignored) or on a
label-free `from_folder` folder: the pretraining checkpoint loads into a
segmentation model with a report, and SIGKILL after a checkpoint then
resume (through `python -m medseg_jax.main`, as in tests/train_test.py)
ends with the parameters of an uninterrupted run.
"""

import dataclasses
import functools
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import common
from configs import ssl_isbi2012
from medseg_jax import checkpointing
from medseg_jax import main as main_lib
from medseg_jax import models
from medseg_jax import optimizers
from medseg_jax import pretext
from medseg_jax import train
from medseg_jax import train_ssl
from medseg_jax.data import registry
from medseg_jax.data.from_folder import from_folder
from medseg_jax.data.from_folder import unlabelled
from tests import train_test


def _tiny_config(data_dir, pretext_name="models_genesis", **overrides):
  config = ssl_isbi2012.get_config("runlocal")
  config.data_dir = str(data_dir)
  config.data.patch_size = (32, 32)
  config.model.features = (4, 8)
  config.num_train_steps = 4
  config.log_every_steps = 1
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  common.ssl_config(config, pretext_name)
  return train_test.set_fields(config, overrides)


# ----------------------------------------------------------------------------
# The step, in-process.
# ----------------------------------------------------------------------------
@pytest.mark.slow  # 30 steps: about 7 s (SimMIM) to 15 s (Models Genesis).
@pytest.mark.parametrize("name", ["models_genesis", "simmim"])
def test_ssl_loss_falls_on_a_tiny_dataset(name):
  # Two fixed smooth images; 30 steps of a tiny U-Net must restore them
  # better than at the start (the same corruption keys in both windows'
  # average, so the fall is the network's).
  config = _tiny_config("/unused", name)
  if name == "simmim":
    config.ssl.options.patch = 8
  spec = registry.get_dataset_spec(config.dataset)
  model = models.from_config(config, dataclasses.replace(spec, num_classes=1))
  tx, schedule = optimizers.create(
    ml_collections.ConfigDict(
      dict(name="adam", learning_rate=1e-2, schedule="constant", warmup_steps=0)
    ),
    30,
  )
  grid = jnp.stack(jnp.meshgrid(*[jnp.linspace(-2, 2, 32)] * 2), -1)
  images = jnp.stack(
    [jnp.sin(grid[..., :1] * 2), jnp.cos(grid[..., 1:] * 3) * grid[..., :1]]
  )
  batch = {
    "image": images,
    "label": jnp.zeros((2, 32, 32), jnp.int32),
    "mask": jnp.ones((2, 32, 32)),
  }
  variables = model.init(jax.random.key(0), images[:1], train=False)
  state = train.TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=tx,
    batch_stats=variables.get("batch_stats", {}),
  )
  step = jax.jit(
    functools.partial(
      train_ssl._train_step,  # noqa: SLF001
      pretext=pretext.from_config(config.ssl),
      kind="mse",
      schedule=schedule,
    )
  )
  losses = []
  for _ in range(30):
    state, metrics, finite = step(state, batch, jax.random.key(1))
    assert bool(finite)
    losses.append(float(metrics.compute()["loss"]))
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_ssl_config_errors_name_the_valid_choices():
  config = _tiny_config("/unused")
  config.ssl.pretext = "jigsaw"
  with pytest.raises(ValueError, match="models_genesis"):
    train_ssl.check_config(config)
  del config["ssl"]
  with pytest.raises(ValueError, match="config.ssl"):
    train_ssl.check_config(config)
  assert main_lib.trainer_module(_tiny_config("/unused")) == (
    "medseg_jax.train_ssl"
  )


# ----------------------------------------------------------------------------
# A label-free folder.
# ----------------------------------------------------------------------------
def _label_free_folder(tmp_path, count=3):
  raw = tmp_path / "raw"
  raw.mkdir()
  rng = np.random.default_rng(0)
  for i in range(count):
    pixels = rng.integers(0, 256, (40, 36), dtype=np.uint8)
    Image.fromarray(pixels).save(raw / f"slice{i}.png")
  folder = tmp_path / "unlabelled"
  unlabelled.write_folder(folder, [raw], name="tiny_unlabelled", spatial_dims=2)
  return folder


def test_label_free_folder_builds_and_supervised_use_fails_clearly(tmp_path):
  folder = _label_free_folder(tmp_path)
  assert not (folder / from_folder.LABELS_DIR).exists()
  data_dir = tmp_path / "tfds"
  registry.prepare("from_folder", data_dir, folder)
  spec = registry.get_dataset_spec("from_folder", folder)
  assert not spec.labelled
  source = registry.data_source("from_folder", "train", data_dir, folder)
  assert len(source) == 3
  example = source[0]
  assert example["image"].shape == (40, 36, 1)
  assert not example["label"].any()
  # The supervised trainer refuses it, before building anything.
  config = _tiny_config(data_dir, dataset="from_folder", manual_dir=str(folder))
  with pytest.raises(ValueError, match="has no labels"):
    train.prepare(config, str(tmp_path / "supervised"))
  # A labelled folder still needs its class names and its labels.
  description = from_folder.load_dataset_json(folder)
  assert description.labelled is False
  (folder / from_folder.DATASET_JSON).write_text(
    '{"name": "x", "spatial_dims": 2, "channel_names": ["EM"]}'
  )
  with pytest.raises(from_folder.DatasetJsonError, match="class_names"):
    from_folder.load_dataset_json(folder)


@pytest.mark.long
def test_pretrain_on_label_free_folder_then_fine_tune_loads_the_weights(
  tmp_path, synthetic_2d_dir
):
  folder = _label_free_folder(tmp_path)
  config = _tiny_config(
    tmp_path / "tfds", dataset="from_folder", manual_dir=str(folder)
  )
  result = train_ssl.train_and_evaluate(config, str(tmp_path / "pre"))
  assert result == {"steps": 4, "pretext": "models_genesis"}
  meta = train_ssl.read_metadata(tmp_path / "pre")
  assert meta["pretext"] == "models_genesis"
  assert meta["steps"] == 4 and meta["dataset"] == "from_folder"
  assert meta["manual_dir"] == str(folder)
  source, _ = checkpointing.load_params(tmp_path / "pre")
  assert source["head"]["kernel"].shape[-1] == 1  # One image channel.

  # Into a 4-class U-Net of the same features: everything but the head.
  tuned = train_test.tiny_config(
    synthetic_2d_dir, num_train_steps=1, init_from=str(tmp_path / "pre")
  )
  tuned.init_exclude = ["^head/"]
  train.train_and_evaluate(tuned, str(tmp_path / "tuned"))
  report = (tmp_path / "tuned" / "init_from_report.txt").read_text()
  assert "pretrained by models_genesis for 4 steps" in report
  assert "loaded: down_0/conv_0/kernel" in report
  assert "loaded: up_0/conv_1/kernel" in report
  assert "excluded: head/kernel" in report
  flat = checkpointing.load_params(tmp_path / "tuned")[0]
  # Loaded, then trained one step: close to the source, not equal to a
  # fresh init (which would be far).
  diff = np.abs(
    flat["down_0"]["conv_0"]["kernel"] - source["down_0"]["conv_0"]["kernel"]
  )
  assert diff.max() < 0.05


@pytest.mark.slow
@pytest.mark.long
def test_sigkill_then_resume_matches_uninterrupted_run(
  synthetic_2d_dir, tmp_path
):
  # As tests/train_test.py: MEDSEG_FAULT_AT_STEP=4 SIGKILLs the trainer
  # right after its step-4 save has started; the step-2 checkpoint is
  # complete. The data iterator's position and the pretext keys must make
  # the resumed run corrupt and see the same batches.
  steps, every = 6, 2
  flags = {
    "num_train_steps": steps,
    "checkpoint_every_steps": every,
    "eval_every_steps": every,
    "log_every_steps": every,
    "optimizer.warmup_steps": 0,
  }
  config = _tiny_config(synthetic_2d_dir, **flags)
  straight = tmp_path / "straight"
  train_ssl.train_and_evaluate(config, str(straight))

  killed_dir = tmp_path / "killed"
  killed = train_test.run_killed(
    "configs/ssl_isbi2012.py:runlocal",
    killed_dir,
    synthetic_2d_dir,
    flags,
    4,
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  saved = train_test._saved_steps(killed_dir)  # noqa: SLF001
  assert saved in ([2], [2, 4]), saved

  train_ssl.train_and_evaluate(config, str(killed_dir))
  a, step_a = checkpointing.load_state(straight, "latest")
  b, step_b = checkpointing.load_state(killed_dir, "latest")
  assert step_a == step_b == steps
  for part in ("params", "opt_state"):
    assert train_test.max_abs_diff(a[part], b[part]) < 1e-6, part
  losses_a = train_test.train_losses(straight)
  losses_b = train_test.train_losses(killed_dir)
  for step in range(max(saved) + every, steps + 1, every):
    assert losses_a[step] == pytest.approx(losses_b[step], rel=1e-6), step
