"""End-to-end trainer tests on the synthetic phantoms.

Most tests call ``train.train_and_evaluate`` in-process, on one of the
suite's 8 fake CPU devices, or on several through the ``mesh_devices``
fixture (tests/conftest.py). The SIGKILL, SIGTERM and two-process tests run
``python -m medseg_jax.main`` in a subprocess, because signals and
``jax.distributed`` are per process.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from configs import common
from configs import unet3d_synthetic
from configs import unet_synthetic
from medseg_jax import checkpointing
from medseg_jax import optimizers
from medseg_jax import sharding
from medseg_jax import train
from medseg_jax import writers
from medseg_jax.data import registry
from tests import polling

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(synthetic_2d_dir):
  return synthetic_2d_dir


def tiny_config(data_dir, **overrides):
  config = unet_synthetic.get_config("runlocal")
  config.data_dir = str(data_dir)
  config.data.patch_size = (32, 32)
  config.model.features = (4, 8)
  config.num_train_steps = 6
  config.log_every_steps = 1
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  return set_fields(config, overrides)


def set_fields(config, overrides):
  """Sets ``{"a.b": value}`` fields of ``config`` in place; returns it."""
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def run_killed(config_arg, workdir, data_dir, flags, at_step, *extra):
  """``python -m medseg_jax.main --config=<config_arg>`` on 1 device with
  ``--config.<k>=<v>`` for ``flags`` and ``extra`` flags, SIGKILLed by the
  trainer's test hook right after its step-``at_step`` save has started;
  returns the completed process."""
  env = dict(os.environ, MEDSEG_FAULT_AT_STEP=str(at_step))
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=1"
  )
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "medseg_jax.main",
      f"--config={config_arg}",
      f"--workdir={workdir}",
      f"--config.data_dir={data_dir}",
      "--config.data.patch_size=(32, 32)",
      "--config.model.features=(4, 8)",
      *extra,
      *[f"--config.{k}={v}" for k, v in flags.items()],
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=polling.GENEROUS_TIMEOUT_S,
  )


def run_main(workdir, data_dir, *flags, devices=1, wait=True, env=None):
  cmd = [
    sys.executable,
    "-m",
    "medseg_jax.main",
    "--config=configs/unet_synthetic.py:runlocal",
    f"--workdir={workdir}",
    f"--config.data_dir={data_dir}",
    "--config.model.features=(4, 8)",
    "--config.data.patch_size=(32, 32)",
    "--config.log_every_steps=1",
    *flags,
  ]
  full_env = dict(os.environ)
  full_env["XLA_FLAGS"] = (
    full_env.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count={devices}"
  )
  full_env.update(env or {})
  if wait:
    return subprocess.run(
      cmd,
      cwd=REPO,
      env=full_env,
      capture_output=True,
      text=True,
      timeout=polling.GENEROUS_TIMEOUT_S,
    )
  return subprocess.Popen(
    cmd,
    cwd=REPO,
    env=full_env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def train_losses(workdir):
  records = writers.read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")
  return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def final_params(workdir):
  params, _ = checkpointing.load_params(workdir, "latest")
  return params


def max_abs_diff(a, b):
  diffs = jax.tree.map(
    lambda x, y: np.max(np.abs(np.asarray(x) - np.asarray(y))), a, b
  )
  return max(jax.tree.leaves(diffs))


@pytest.mark.slow
def test_train_and_evaluate_writes_reports_overlays_and_checkpoints(
  data_dir, tmp_path
):
  summary = train.train_and_evaluate(tiny_config(data_dir), str(tmp_path))
  assert set(summary["per_class"]) == {
    "background",
    "organ",
    "lesion",
    "vessel",
  }
  assert 0.0 <= summary["mean_foreground_dice"] <= 1.0
  name = f"test_8_step{summary['step']}"
  assert (tmp_path / "eval" / f"{name}_per_case.csv").exists()
  assert (tmp_path / "eval" / f"{name}_summary.json").exists()
  assert list((tmp_path / "eval" / f"{name}_overlays").glob("*.png"))
  steps = sorted(
    int(p.name)
    for p in (tmp_path / "checkpoints").iterdir()
    if p.name.isdigit()
  )
  assert steps == [3, 6]
  losses = train_losses(tmp_path)
  assert sorted(losses) == list(range(1, 7))
  assert all(np.isfinite(v) for v in losses.values())


@pytest.mark.slow
@pytest.mark.long
def test_same_seed_gives_identical_parameters(data_dir, tmp_path):
  for name in ("a", "b"):
    train.train_and_evaluate(
      tiny_config(data_dir, num_train_steps=4), str(tmp_path / name)
    )
  assert (
    max_abs_diff(final_params(tmp_path / "a"), final_params(tmp_path / "b"))
    == 0
  )


@pytest.mark.slow
def test_finished_run_resumes_without_training_again(data_dir, tmp_path):
  config = tiny_config(data_dir, num_train_steps=3)
  train.train_and_evaluate(config, str(tmp_path))
  before = final_params(tmp_path)
  train.train_and_evaluate(config, str(tmp_path))
  assert max_abs_diff(before, final_params(tmp_path)) == 0
  assert sorted(train_losses(tmp_path)) == [1, 2, 3]


def test_unknown_names_list_the_valid_ones(data_dir, tmp_path):
  cases = {
    "model.name": ("unet3000", "unet"),
    "loss.name": ("focal_dice_xyz", "ce_dice"),
    "dataset": ("nope/2d", "synthetic_phantoms/2d"),
    "optimizer.name": ("adamz", "adamw"),
  }
  for key, (bad, valid) in cases.items():
    with pytest.raises(ValueError, match=valid.replace("/", ".")):
      train.train_and_evaluate(
        tiny_config(data_dir, **{key: bad}), str(tmp_path)
      )


def _nan_after(num_good_updates):
  """An optax transformation whose updates turn NaN after some steps."""

  def init(params):
    return optax.ScaleByScheduleState(
      count=jax.numpy.zeros([], jax.numpy.int32)
    )

  def update(updates, state, params=None):
    del params
    poison = jax.numpy.where(
      state.count >= num_good_updates, jax.numpy.nan, 0.0
    )
    updates = jax.tree.map(lambda u: u + poison, updates)
    return updates, optax.ScaleByScheduleState(count=state.count + 1)

  return optax.GradientTransformation(init, update)


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(
  data_dir, tmp_path, monkeypatch
):
  real_create = optimizers.create

  def create(config, steps):
    tx, schedule = real_create(config, steps)
    return optax.chain(tx, _nan_after(4)), schedule

  monkeypatch.setattr(optimizers, "create", create)
  config = tiny_config(
    data_dir, num_train_steps=10, checkpoint_every_steps=2, eval_every_steps=100
  )
  with pytest.raises(train.NonFiniteLossError, match="step 5.*step 4"):
    train.train_and_evaluate(config, str(tmp_path))
  steps = sorted(
    int(p.name)
    for p in (tmp_path / "checkpoints").iterdir()
    if p.name.isdigit()
  )
  assert steps == [2, 4]
  params = final_params(tmp_path)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


@pytest.fixture
def meshes(monkeypatch):
  """The shapes of the meshes the trainer builds in this test, in order."""
  shapes = []
  make_mesh = sharding.make_mesh

  def recording(*args, **kwargs):
    mesh = make_mesh(*args, **kwargs)
    shapes.append(dict(mesh.shape))
    return mesh

  monkeypatch.setattr(sharding, "make_mesh", recording)
  return shapes


@pytest.mark.slow
def test_eight_devices_match_one_device(
  data_dir, tmp_path, mesh_devices, meshes
):
  config = tiny_config(data_dir, num_train_steps=5, eval_every_steps=5)
  for devices in (1, 8):
    mesh_devices(devices)
    train.train_and_evaluate(config, str(tmp_path / f"d{devices}"))
  assert meshes == [{"data": 1}, {"data": 8}]
  one, eight = train_losses(tmp_path / "d1"), train_losses(tmp_path / "d8")
  assert sorted(one) == sorted(eight) == [1, 2, 3, 4, 5]
  for step in one:
    assert abs(one[step] - eight[step]) <= 1e-4 * abs(one[step]), (
      step,
      one,
      eight,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
  "switch", [{"model.dtype": "bfloat16"}, {"model.remat": True}]
)
def test_precision_and_remat_switches_train(data_dir, tmp_path, switch):
  # A higher learning rate without warm-up so that 8 steps move the loss.
  overrides = {
    "num_train_steps": 8,
    "eval_every_steps": 8,
    "checkpoint_every_steps": 8,
    "optimizer.warmup_steps": 0,
    "optimizer.learning_rate": 1e-2,
  }
  train.train_and_evaluate(
    tiny_config(data_dir, **overrides), str(tmp_path / "f32")
  )
  train.train_and_evaluate(
    tiny_config(data_dir, **overrides, **switch), str(tmp_path / "switch")
  )
  base, losses = (
    train_losses(tmp_path / "f32"),
    train_losses(tmp_path / "switch"),
  )
  assert sorted(losses) == list(range(1, 9))
  assert all(np.isfinite(v) for v in losses.values())
  assert np.mean([losses[s] for s in (6, 7, 8)]) < np.mean(
    [losses[s] for s in (1, 2, 3)]
  )
  params = final_params(tmp_path / "switch")
  assert {np.asarray(x).dtype for x in jax.tree.leaves(params)} == {
    np.dtype(np.float32)
  }
  if "model.remat" in switch:
    # Recomputing activations changes nothing but memory and time.
    for step in base:
      assert abs(base[step] - losses[step]) <= 1e-4 * abs(base[step])
  else:
    # bfloat16 follows the float32 run closely, but not exactly.
    assert losses != base
    for step in base:
      assert abs(base[step] - losses[step]) <= 0.05 * abs(base[step])


def test_bad_dtype_and_unsupported_remat_are_explained(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"dtype 'float16'.*'bfloat16'"):
    train.train_and_evaluate(
      tiny_config(data_dir, **{"model.dtype": "float16"}), str(tmp_path / "a")
    )
  config = tiny_config(data_dir, **{"model.remat": True})
  config.model.name = "fcn"  # Checked before FCN sees U-Net's arguments.
  with pytest.raises(ValueError, match=r"support remat.*'unet'"):
    train.train_and_evaluate(config, str(tmp_path / "b"))


def _free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _run_two_processes(workdir, data_dir, flags, attempts=3):
  """Runs two joined trainer processes; returns their outputs.

  The coordinator's port is picked free, then released before process 0
  binds it, so another program may take it in between: process 0 then
  fails at once with "Failed to add port", and the pair is started again
  on a new port (no timing involved).
  """
  for _ in range(attempts):
    port = _free_port()
    procs = [
      run_main(
        workdir,
        data_dir,
        *flags,
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        wait=False,
      )
      for i in range(2)
    ]
    first = procs[0].communicate(timeout=polling.GENEROUS_TIMEOUT_S)[0]
    if procs[0].returncode != 0 and "Failed to add port" in first:
      procs[1].kill()
      procs[1].communicate()
      shutil.rmtree(workdir, ignore_errors=True)
      continue
    return [
      first,
      procs[1].communicate(timeout=polling.GENEROUS_TIMEOUT_S)[0],
    ], procs
  raise AssertionError(f"no free coordinator port in {attempts} attempts")


@pytest.mark.long
def test_two_processes_match_one_process_with_both_shards(
  data_dir, tmp_path, mesh_devices
):
  # Two processes on localhost, one CPU device each, joined through
  # jax.distributed (gloo collectives), against one process with two
  # devices: the same batches, losses, gathered evaluation and reports.
  flags = ["--config.num_train_steps=5", "--config.eval_every_steps=5"]
  outputs, procs = _run_two_processes(tmp_path / "two", data_dir, flags)
  for proc, output in zip(procs, outputs, strict=True):
    assert proc.returncode == 0, output[-3000:]
  assert "JAX process 1 of 2" in outputs[1]
  mesh_devices(2)
  train.train_and_evaluate(
    tiny_config(data_dir, num_train_steps=5, eval_every_steps=5),
    str(tmp_path / "one"),
  )

  # Only process 0 wrote metrics: one line per step.
  records = writers.read_jsonl(tmp_path / "two" / "metrics.jsonl")
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4, 5]
  one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
  for step in one:
    assert abs(one[step] - two[step]) <= 1e-4 * abs(one[step]), (one, two)
  # Each process evaluated half of the test cases; the gathered report has
  # all of them, in order, with the same scores.
  reports = [
    json.loads(
      next((tmp_path / name / "eval").glob("test_8_*_summary.json")).read_text()
    )
    for name in ("one", "two")
  ]
  assert list(reports[1]["per_case"]) == [f"test_{i:04d}" for i in range(8)]
  for case, scores in reports[0]["per_case"].items():
    for name, values in scores.items():
      np.testing.assert_allclose(
        values["dice"], reports[1]["per_case"][case][name]["dice"], atol=1e-6
      )
  overlays = [
    sorted(p.name for p in (tmp_path / name / "eval").glob("*/*.png"))
    for name in ("one", "two")
  ]
  assert overlays[0] == overlays[1] and overlays[0]
  # Both processes took part in the checkpoint; it restores.
  params = final_params(tmp_path / "two")
  assert max_abs_diff(params, final_params(tmp_path / "one")) < 1e-4


@pytest.mark.slow
@pytest.mark.long
def test_depth_split_mesh_trains_like_the_data_mesh(
  tmp_path, mesh_devices, meshes
):
  # 3-D U-Net on 4 devices: mesh data=2 x spatial=2 (batches and
  # activations split along depth too) against the plain 4-way data mesh.
  data_dir = tmp_path / "tfds"
  registry.prepare("synthetic_phantoms/3d", str(data_dir))
  mesh_devices(4)
  for spatial in (2, 1):
    config = unet3d_synthetic.get_config("runlocal")
    config.data_dir = str(data_dir)
    config.num_train_steps = 3
    config.eval_every_steps = 3
    config.log_every_steps = 1
    config.batch_size = 4
    config.eval_split = "validation[:4]"
    config.test_split = "test[:4]"
    config.eval.surface_metrics = False
    config.mesh.spatial = spatial
    train.train_and_evaluate(config, str(tmp_path / f"spatial{spatial}"))
  assert meshes == [{"data": 2, "spatial": 2}, {"data": 4}]
  split, plain = (
    writers.read_jsonl(tmp_path / name / "metrics.jsonl")
    for name in ("spatial2", "spatial1")
  )
  for key in ("train/loss", "val/mean_foreground_dice"):
    a = [r[key] for r in split if key in r]
    b = [r[key] for r in plain if key in r]
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a, b, rtol=1e-4)


def _wait_for_checkpoint(workdir, proc):
  """Polls until ``workdir`` has a checkpoint or ``proc`` has exited."""
  ckpt = pathlib.Path(workdir) / "checkpoints"

  def saved():
    return ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir())

  polling.wait_until(lambda: saved() or proc.poll() is not None)
  return saved()


def _saved_steps(workdir):
  ckpt = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())


@pytest.mark.long
def test_sigkill_then_resume_matches_uninterrupted_run(data_dir, tmp_path):
  # MEDSEG_FAULT_AT_STEP=10 makes the trainer SIGKILL itself right after its
  # step-10 checkpoint save has started (asynchronously), as a crash would:
  # no handler, no flush. Orbax finishes one save before starting the next,
  # so the step-5 checkpoint is complete; step 10's may or may not be.
  steps, every = 20, 5
  config = tiny_config(
    data_dir,
    num_train_steps=steps,
    checkpoint_every_steps=every,
    eval_every_steps=1000,
    log_every_steps=every,
  )
  train.train_and_evaluate(config, str(tmp_path / "straight"))

  killed_dir = tmp_path / "killed"
  killed = run_main(
    killed_dir,
    data_dir,
    f"--config.num_train_steps={steps}",
    f"--config.checkpoint_every_steps={every}",
    "--config.eval_every_steps=1000",
    f"--config.log_every_steps={every}",
    env={"MEDSEG_FAULT_AT_STEP": "10"},
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  saved = _saved_steps(killed_dir)
  assert saved in ([5], [5, 10]), saved

  train.train_and_evaluate(config, str(killed_dir))
  assert _saved_steps(killed_dir)[-1] == steps
  diff = max_abs_diff(
    final_params(tmp_path / "straight"), final_params(killed_dir)
  )
  assert diff < 1e-6
  # Same batches: the per-step losses after the resume point agree.
  a, b = train_losses(tmp_path / "straight"), train_losses(killed_dir)
  for step in range(max(saved) + every, steps + 1, every):
    assert a[step] == pytest.approx(b[step], rel=1e-6), step


@pytest.mark.long
def test_sigterm_checkpoints_then_exits_cleanly(data_dir, tmp_path):
  flags = [
    "--config.num_train_steps=100000",
    "--config.checkpoint_every_steps=5",
    "--config.eval_every_steps=100000",
  ]
  proc = run_main(tmp_path, data_dir, *flags, wait=False)
  assert _wait_for_checkpoint(tmp_path, proc), proc.communicate()[0][-3000:]
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=polling.GENEROUS_TIMEOUT_S)
  assert proc.returncode == 0, output[-3000:]
  steps = [
    int(p.name)
    for p in (tmp_path / "checkpoints").iterdir()
    if p.name.isdigit()
  ]
  last_logged = max(train_losses(tmp_path))
  assert max(steps) == last_logged  # The step it stopped at was saved.


@pytest.mark.slow
@pytest.mark.long
def test_deep_supervision_adds_auxiliary_losses(data_dir, tmp_path):
  config = tiny_config(data_dir, num_train_steps=2, eval_every_steps=2)
  config.model.features = (4, 8, 16)
  config.model.deep_supervision = True
  train.train_and_evaluate(config, str(tmp_path / "ds"))
  config.model.deep_supervision = False
  train.train_and_evaluate(config, str(tmp_path / "plain"))
  with_aux, plain = (
    train_losses(tmp_path / "ds"),
    train_losses(tmp_path / "plain"),
  )
  assert all(np.isfinite(v) for v in with_aux.values())
  # Same first batch and, apart from the auxiliary heads, the same weights:
  # the first loss differs only by the weighted auxiliary terms.
  assert with_aux[1] != pytest.approx(plain[1], rel=1e-6)


@pytest.mark.slow
def test_relative_workdir_and_data_dir(data_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = tiny_config(data_dir, num_train_steps=2, eval_every_steps=2)
  train.train_and_evaluate(config, "runs/relative")
  assert (tmp_path / "runs" / "relative" / "checkpoints" / "2").is_dir()
  assert checkpointing.load_params("runs/relative")[0]


@pytest.mark.slow
def test_resuming_with_another_model_is_explained(tmp_path, data_dir):
  train.train_and_evaluate(tiny_config(data_dir), str(tmp_path))
  wider = tiny_config(data_dir, **{"model.features": (8, 16)})
  wider.num_train_steps = 8
  with pytest.raises(
    ValueError, match=r"does not match the run.*model\.features"
  ):
    train.train_and_evaluate(wider, str(tmp_path))


AUGMENT = [
  dict(op="flip", p=0.5),
  dict(op="affine", p=0.5, rotation=(-10, 10)),
  dict(op="gamma", p=0.5, gamma=(0.8, 1.2)),
]


@pytest.mark.slow
@pytest.mark.long
def test_on_device_augmentation_is_deterministic_and_changes_training(
  tmp_path, data_dir
):
  plain = train.train_and_evaluate(tiny_config(data_dir), str(tmp_path / "a"))
  del plain
  augmented = tiny_config(data_dir, augment=AUGMENT)
  train.train_and_evaluate(augmented, str(tmp_path / "b"))
  train.train_and_evaluate(augmented, str(tmp_path / "c"))
  a, b, c = (final_params(tmp_path / x) for x in "abc")
  assert max_abs_diff(b, c) == 0.0  # Same seed and steps: same batches.
  assert max_abs_diff(a, b) > 0.0  # The augmentation did something.
  assert train_losses(tmp_path / "b") == train_losses(tmp_path / "c")


@pytest.mark.long
def test_host_augmentation_trains_like_device_and_resumes_exactly(
  tmp_path, data_dir
):
  device = tiny_config(data_dir, augment=AUGMENT)
  host = tiny_config(data_dir, augment=AUGMENT, augment_on="host")
  train.train_and_evaluate(device, str(tmp_path / "device"))
  train.train_and_evaluate(host, str(tmp_path / "host"))
  # The same ops with the same keys, once in the pipeline and once in the
  # step (no dropout here, so nothing else differs).
  on_device, on_host = (
    train_losses(tmp_path / "device"),
    train_losses(tmp_path / "host"),
  )
  assert sorted(on_host) == list(range(1, 7))
  for step, loss in on_device.items():
    assert on_host[step] == pytest.approx(loss, rel=1e-5), step
  # Resume from step 3 (as after a crash): the grain iterator state brings
  # back the position, and with it the augmented batches of steps 4-6.
  resumed = tmp_path / "resumed"
  shutil.copytree(tmp_path / "host" / "checkpoints", resumed / "checkpoints")
  shutil.rmtree(resumed / "checkpoints" / "6")
  train.train_and_evaluate(host, str(resumed))
  assert train_losses(resumed) == {step: on_host[step] for step in range(4, 7)}
  assert (
    max_abs_diff(final_params(tmp_path / "host"), final_params(resumed)) == 0
  )


def test_bad_augment_on_fails_at_start_up(tmp_path, data_dir):
  config = tiny_config(data_dir, augment=AUGMENT, augment_on="gpu")
  with pytest.raises(ValueError, match="augment_on='gpu'"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_bad_augmentation_fails_at_start_up(tmp_path, data_dir):
  config = tiny_config(data_dir, augment=[dict(op="swirl", p=0.5)])
  with pytest.raises(ValueError, match="swirl"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists() or not any(
    (tmp_path / "checkpoints").iterdir()
  )


@pytest.mark.long
def test_loss_terms_train_one_step_with_deep_supervision(data_dir, tmp_path):
  # A weighted sum with a topology and a distance-map term; the pipeline
  # adds the maps (after the host flips) and deep supervision subsamples
  # them with the labels.
  config = tiny_config(
    data_dir,
    num_train_steps=1,
    eval_every_steps=1,
    augment=[dict(op="flip")],
    augment_on="host",
  )
  config.model.features = (4, 8, 16)
  config.model.deep_supervision = True
  config.eval.surface_metrics = False
  config.eval_split = config.test_split = "test[:2]"
  common.loss_terms(
    config,
    dict(name="cross_entropy", weight=1.0),
    dict(name="cldice", weight=0.5, iterations=2),
    dict(name="boundary", weight=0.01),
  )
  train.train_and_evaluate(config, str(tmp_path))
  losses_logged = train_losses(tmp_path)
  assert list(losses_logged) == [1] and np.isfinite(losses_logged[1])


def test_bad_loss_terms_fail_at_start_up(data_dir, tmp_path):
  cases = [
    ([dict(name="cldice", iterations=-1)], "iterations"),
    ([dict(name="focal", beta=0.5)], r"options are \['gamma', 'alpha'\]"),
    ([dict(name="lovasz")], "valid names: .*generalized_dice"),
    ([dict(name="dice", weight=-1.0)], "weight"),
  ]
  for terms, message in cases:
    config = tiny_config(data_dir)
    common.loss_terms(config, *terms)
    with pytest.raises(ValueError, match=message):
      train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_deep_supervision_subsamples_distance_maps_like_labels():
  # Each level's loss sees label, mask and distance at the same stride.
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, (2, 8, 8)).astype(np.int32)
  batch = {
    "label": jax.numpy.asarray(labels),
    "mask": jax.numpy.ones((2, 8, 8)),
    "distance": jax.numpy.asarray(rng.normal(size=(2, 8, 8, 3))),
  }
  seen = []

  def loss_fn(logits, labels, mask, distance):
    seen.append((logits.shape, labels, mask.shape, distance))
    return jax.numpy.zeros(logits.shape[0])

  aux = [jax.numpy.zeros((2, 4, 4, 3)), jax.numpy.zeros((2, 2, 2, 3))]
  train._deep_supervision_loss(jax.numpy.zeros(()), aux, batch, loss_fn)
  for level, (shape, level_labels, mask_shape, dist) in enumerate(seen, 1):
    stride = 2**level
    assert shape[1:3] == level_labels.shape[1:] == mask_shape[1:]
    np.testing.assert_array_equal(level_labels, labels[:, ::stride, ::stride])
    np.testing.assert_array_equal(
      dist, batch["distance"][:, ::stride, ::stride]
    )


def test_boundary_loss_with_device_flips_fails_before_data(tmp_path):
  # Refused before the dataset is built: data_dir does not even exist.
  config = tiny_config(tmp_path / "no_data", augment=[dict(op="flip")])
  common.loss_terms(config, dict(name="boundary"))
  with pytest.raises(ValueError, match="augment_on='host'"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "no_data").exists()
