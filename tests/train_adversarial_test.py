"""Tests for the adversarial trainer (medseg_jax/train_adversarial.py).

The step tests call the jitted step on a tiny U-Net and critic in-process.
The end-to-end tests train on the synthetic phantoms: SIGKILL after a
checkpoint then resume (through `python -m medseg_jax.main`, as in
tests/train_test.py), and 1 against 8 fake devices.
"""

import functools
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import segan3d_synthetic
from configs import segan_isbi2012
from configs import segan_synthetic
from medseg_jax import checkpointing
from medseg_jax import losses
from medseg_jax import main as main_lib
from medseg_jax import models
from medseg_jax import optimizers
from medseg_jax import train
from medseg_jax import train_adversarial
from medseg_jax import writers
from medseg_jax.data import registry
from medseg_jax.evaluation import case_predictor
from medseg_jax.models import critics
from tests import train_test

PATCH = (32, 32)
NUM_CLASSES = 4  # The 2-D phantoms: background, organ, lesion, vessel.


def _tiny_config(critic="segan", **overrides):
  config = segan_synthetic.get_config(f"runlocal,critic={critic}")
  config.data.patch_size = PATCH
  config.model.features = (4, 8)
  config.optimizer.warmup_steps = 0  # A first step that moves the weights.
  if critic == "segan":
    config.adversarial.critic.features = (4, 8)
  else:
    config.adversarial.critic.ndf = 4
  return train_test.set_fields(config, overrides)


def _state_and_step(config, weight=None):
  """A fresh state and the trainer's jitted step for `config` (one device)."""
  spec = registry.get_dataset_spec(config.dataset)
  model = models.from_config(config, spec)
  critic = critics.from_config(config.adversarial.critic, 2)
  tx, schedule = optimizers.create(config.optimizer, 10)
  critic_tx, _ = optimizers.create(config.adversarial.optimizer, 10)
  state = train_adversarial.init_state(
    jax.random.key(0),
    model=model,
    critic=critic,
    tx=tx,
    critic_tx=critic_tx,
    patch=PATCH,
    num_channels=spec.num_channels,
    num_classes=spec.num_classes,
  )
  adv = config.adversarial
  step = jax.jit(
    functools.partial(
      train_adversarial._train_step,  # noqa: SLF001
      loss_fn=losses.get_loss(config.loss.name),
      schedule=schedule,
      critic_name=adv.critic.name,
      gan_loss=adv.loss,
      weight=adv.weight if weight is None else weight,
      start_step=adv.start_step,
      critic_steps=adv.critic_steps,
      critic_clip=adv.critic_clip,
    )
  )
  return state, step, schedule


def _batch(seed=0, batch_size=2):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {
    "image": jax.random.normal(k1, (batch_size, *PATCH, 1)),
    "label": jax.random.randint(k2, (batch_size, *PATCH), 0, NUM_CLASSES),
    "mask": jnp.ones((batch_size, *PATCH), jnp.float32),
  }


def _max_abs_diff(a, b):
  return train_test.max_abs_diff(a, b)


@pytest.mark.long
@pytest.mark.parametrize(
  "critic, overrides",
  [
    ("segan", {"adversarial.critic_steps": 2}),
    (
      "patchgan",
      {"adversarial.loss": "hinge", "adversarial.critic.spectral_norm": True},
    ),
    ("patchgan", {"adversarial.loss": "bce"}),
  ],
)
def test_step_losses_are_finite_and_both_networks_change(critic, overrides):
  config = _tiny_config(critic, **overrides)
  state, step, _ = _state_and_step(config)
  before = jax.device_get(state)
  new_state, metrics, finite = step(state, _batch(), jax.random.key(1))
  values = {k: float(v) for k, v in metrics.compute().items()}
  assert bool(finite)
  assert all(np.isfinite(v) for v in values.values()), values
  assert values["critic_grad_norm"] > 0 and values["grad_norm"] > 0
  # The adversarial term is part of the segmentor's loss.
  assert values["loss"] == pytest.approx(
    values["supervised_loss"]
    + config.adversarial.weight * values["adversarial_loss"],
    rel=1e-5,
  )
  assert _max_abs_diff(before.params, new_state.params) > 0
  assert _max_abs_diff(before.critic.params, new_state.critic.params) > 0
  assert int(new_state.step) == 1
  assert int(new_state.critic.step) == config.adversarial.critic_steps
  if config.adversarial.critic_clip:
    clip = config.adversarial.critic_clip
    leaves = jax.tree.leaves(new_state.critic.params)
    assert max(float(jnp.max(jnp.abs(x))) for x in leaves) <= clip + 1e-7
  if overrides.get("adversarial.critic.spectral_norm"):
    # The power iteration's vectors moved too (they are in the checkpoint).
    assert (
      _max_abs_diff(before.critic.batch_stats, new_state.critic.batch_stats) > 0
    )


@pytest.mark.long
def test_zero_weight_trains_the_segmentor_as_the_supervised_step():
  # With weight 0 the segmentor's update is the supervised trainer's, from
  # the same initial weights (same seed), the same batch and key; with a
  # positive weight it is not.
  config = _tiny_config("patchgan")
  batch, rng = _batch(3), jax.random.key(5)
  state, step, schedule = _state_and_step(config, weight=0.0)
  supervised = train.TrainState.create(
    apply_fn=state.apply_fn, params=state.params, tx=state.tx
  )
  expected, _, _ = jax.jit(
    functools.partial(
      train._train_step,  # noqa: SLF001
      loss_fn=losses.get_loss(config.loss.name),
      schedule=schedule,
    )
  )(supervised, batch, rng)
  zero, _, _ = step(state, batch, rng)
  assert _max_abs_diff(expected.params, zero.params) < 1e-6
  state, step, _ = _state_and_step(config, weight=1.0)
  weighted, _, _ = step(state, batch, rng)
  assert _max_abs_diff(expected.params, weighted.params) > 1e-6


def test_unknown_names_list_the_valid_ones():
  config = _tiny_config()
  config.trainer = "gan"
  with pytest.raises(ValueError, match="adversarial.*supervised"):
    main_lib.trainer_module(config)
  config.trainer = "adversarial"
  assert main_lib.trainer_module(config) == "medseg_jax.train_adversarial"
  del config["trainer"]
  assert main_lib.trainer_module(config) == "medseg_jax.train"
  bad = _tiny_config("patchgan", **{"adversarial.loss": "wasserstein"})
  with pytest.raises(ValueError, match="hinge"):
    train_adversarial.check_config(bad)
  bad = _tiny_config(**{"adversarial.critic.name": "dcgan"})
  with pytest.raises(ValueError, match="patchgan"):
    train_adversarial.check_config(bad)
  bad = _tiny_config(**{"adversarial.critic_steps": 0})
  with pytest.raises(ValueError, match="critic_steps"):
    train_adversarial.check_config(bad)


@pytest.mark.parametrize(
  "module", [segan_synthetic, segan_isbi2012, segan3d_synthetic]
)
@pytest.mark.parametrize("arg", ["", "runlocal", "runlocal,critic=patchgan"])
def test_adversarial_configs_build_their_critic(module, arg):
  config = module.get_config(arg)
  assert config.trainer == "adversarial"
  train_adversarial.check_config(config)
  spec = registry.get_dataset_spec(config.dataset, config.get("manual_dir"))
  critic = critics.from_config(config.adversarial.critic, spec.spatial_dims)
  patch = tuple(config.data.patch_size)
  image = jax.ShapeDtypeStruct((1, *patch, spec.num_channels), jnp.float32)
  maps = jax.ShapeDtypeStruct((1, *patch, spec.num_classes - 1), jnp.float32)
  variables = jax.eval_shape(critic.init, jax.random.key(0), image, maps)
  out = jax.eval_shape(critic.apply, variables, image, maps)
  assert all(min(x.shape[1:-1]) >= 1 for x in jax.tree.leaves(out))


# ----------------------------------------------------------------------------
# End to end, on the synthetic phantoms.
# ----------------------------------------------------------------------------
@pytest.fixture
def data_dir(synthetic_2d_dir):
  return synthetic_2d_dir


def _adversarial_losses(workdir):
  records = writers.read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")
  keys = ("train/loss", "train/critic_loss", "train/adversarial_loss")
  return {r["step"]: [r[k] for k in keys] for r in records if keys[0] in r}


@pytest.mark.slow
@pytest.mark.long
def test_sigkill_then_resume_matches_uninterrupted_run(data_dir, tmp_path):
  # As tests/train_test.py: MEDSEG_FAULT_AT_STEP=4 SIGKILLs the trainer right
  # after its step-4 save has started; the step-2 checkpoint is complete.
  # A PatchGAN with spectral norm, so the critic has optimizer state and
  # power-iteration vectors, and 2 critic steps per segmentor step.
  steps, every = 6, 2
  flags = {
    "num_train_steps": steps,
    "checkpoint_every_steps": every,
    "eval_every_steps": 1000,
    "log_every_steps": every,
    "adversarial.critic_steps": 2,
    "adversarial.critic.spectral_norm": True,
    "optimizer.warmup_steps": 0,
  }
  config = _tiny_config("patchgan", data_dir=str(data_dir), **flags)
  config.test_split = "test[:2]"
  straight = tmp_path / "straight"
  train_adversarial.train_and_evaluate(config, str(straight))

  killed_dir = tmp_path / "killed"
  killed = train_test.run_killed(
    "configs/segan_synthetic.py:runlocal,critic=patchgan",
    killed_dir,
    data_dir,
    flags,
    4,
    "--config.adversarial.critic.ndf=4",
    "--config.test_split=test[:2]",
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  saved = train_test._saved_steps(killed_dir)  # noqa: SLF001
  assert saved in ([2], [2, 4]), saved

  train_adversarial.train_and_evaluate(config, str(killed_dir))
  a, step_a = checkpointing.load_state(straight, "latest")
  b, step_b = checkpointing.load_state(killed_dir, "latest")
  assert step_a == step_b == steps
  # Both networks, both optimizers, the critic's spectral-norm vectors.
  for part in ("params", "opt_state", "critic"):
    assert _max_abs_diff(a[part], b[part]) < 1e-6, part
  losses_a, losses_b = (
    _adversarial_losses(straight),
    _adversarial_losses(killed_dir),
  )
  for step in range(max(saved) + every, steps + 1, every):
    np.testing.assert_allclose(losses_a[step], losses_b[step], rtol=1e-6)
  # A reader of the run needs only the work dir: the segmentor loads.
  trained = case_predictor.load_trained(str(killed_dir), "latest")
  assert _max_abs_diff(trained.variables["params"], b["params"]) == 0


@pytest.mark.slow
@pytest.mark.long
def test_eight_devices_match_one_device(data_dir, tmp_path, mesh_devices):
  config = _tiny_config(
    "segan",
    data_dir=str(data_dir),
    num_train_steps=3,
    eval_every_steps=1000,
    checkpoint_every_steps=1000,
    log_every_steps=1,
    batch_size=8,
  )
  config.test_split = "test[:2]"
  for devices in (1, 8):
    mesh_devices(devices)
    train_adversarial.train_and_evaluate(config, str(tmp_path / f"d{devices}"))
  one = _adversarial_losses(tmp_path / "d1")
  eight = _adversarial_losses(tmp_path / "d8")
  assert sorted(one) == sorted(eight) == [1, 2, 3]
  for step in one:
    np.testing.assert_allclose(one[step], eight[step], rtol=1e-4, atol=1e-6)
