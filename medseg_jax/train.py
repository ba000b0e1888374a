"""Supervised training and evaluation of a segmentation model.

``train_and_evaluate(config, workdir)`` is the whole job, read top to bottom:

  mesh -> data -> model and optimizer -> restore -> jitted step -> loop
  -> final evaluation of the held-out split with the best checkpoint.

Initialisation order (the first that applies wins):
  1. the latest checkpoint in ``workdir/checkpoints`` (automatic resume);
  2. ``config.resume_from``: another run's checkpoint, full state and data
     position (e.g. to branch a run);
  3. ``config.init_from``: another run's weights only (transfer learning),
     or a torchvision ResNet state dict (``.pth``, ``.pt`` or ``.npz``) for
     the ``backbone`` of FCN/DeepLab models;
  4. random initialisation from ``config.seed``.
"""

import contextlib
import dataclasses
import functools
import os
import re
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics
from etils import epath
from flax import struct
from flax.training import train_state

from medseg_jax import augment as augment_lib
from medseg_jax import checkpointing
from medseg_jax import console
from medseg_jax import losses as losses_lib
from medseg_jax import models as models_lib
from medseg_jax import optimizers
from medseg_jax import plan
from medseg_jax import run_config
from medseg_jax import sharding
from medseg_jax import transfer
from medseg_jax import writers
from medseg_jax.data import distance as distance_lib
from medseg_jax.data import pipeline
from medseg_jax.data import registry
from medseg_jax.evaluation import case_predictor
from medseg_jax.evaluation import report as report_lib
from medseg_jax.models import torchvision_import


class TrainState(train_state.TrainState):
  """Params, optimizer state and BatchNorm statistics (``{}`` if none)."""

  batch_stats: Any = struct.field(default_factory=dict)


@struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")


@contextlib.contextmanager
def _finish_saves(manager):
  try:
    yield
  finally:
    manager.wait_until_finished()


class NonFiniteLossError(FloatingPointError):
  """Raised when a loss or gradient becomes NaN or Inf."""


class _StopSignal:
  """Turns SIGTERM into a flag the loop polls, so it can checkpoint first."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. some notebook runners).
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received signal %d: checkpointing, then stopping.", signum)
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def variables_of(state: TrainState) -> dict[str, Any]:
  """The ``model.apply`` variables of a train state."""
  if state.batch_stats:
    return {"params": state.params, "batch_stats": state.batch_stats}
  return {"params": state.params}


TORCHVISION_SUFFIXES = (".pth", ".pt", ".npz")


def _init_from_torchvision(state, config, spec, mesh, workdir):
  """Puts a torchvision ResNet state dict (``.pth``/``.pt`` via torch, or
  ``.npz`` of the same names) into the model's ``backbone``."""
  match = re.fullmatch(r"resnet(\d+)", config.model.get("backbone", ""))
  if not match:
    raise ValueError(
      f"init_from={config.init_from!r} is a torchvision ResNet state dict; "
      f"it needs a model with backbone='resnetNN', got "
      f"{config.model.get('backbone')!r}."
    )
  path = config.init_from
  if path.endswith(".npz"):
    with np.load(path) as data:
      raw = dict(data)
  else:
    raw = torchvision_import.load_torch_state_dict(path)
  params, stats, report = torchvision_import.import_resnet(
    raw,
    int(match.group(1)),
    width=config.model.get("width", 1.0),
    in_channels=spec.num_channels,
    prefix=config.get("init_prefix", ""),
  )
  summary = report.summary()
  logging.info("init_from %s: %s", path, summary)
  if jax.process_index() == 0:
    (workdir / "init_from_report.txt").write_text(summary + "\n")
  return state.replace(
    params=sharding.replicate(
      torchvision_import.graft(state.params, params, "backbone"), mesh
    ),
    batch_stats=sharding.replicate(
      torchvision_import.graft(state.batch_stats, stats, "backbone"), mesh
    ),
  )


def _train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  loss_fn,
  schedule,
  augment=None,
) -> tuple[TrainState, TrainMetrics, jax.Array]:
  """One optimisation step; pure, so it is compiled once and donated.

  With ``augment`` (a ``medseg_jax.augment.Augment``), the batch is
  augmented on the device first, per example, from a key that depends only
  on the seed and the step, so a resumed run sees the same batches.
  """
  rng = jax.random.fold_in(rng, state.step)
  if augment is not None:
    rng, augment_rng = jax.random.split(rng)
    batch = augment(augment_rng, batch)

  def objective(params):
    loss, updates, _ = supervised_loss(state, params, batch, rng, loss_fn)
    return loss, updates

  return update(state, objective, schedule)


def update(
  state: TrainState, objective, schedule
) -> tuple[TrainState, TrainMetrics, jax.Array]:
  """One optimizer update from ``objective(params) -> (loss, updates)``.

  Shared by the supervised and self-supervised steps: gradient, update,
  new batch-norm statistics, the metrics and whether everything is finite.
  """
  (loss, updates), grads = jax.value_and_grad(objective, has_aux=True)(
    state.params
  )
  new_state = state.apply_gradients(grads=grads)
  if state.batch_stats:
    new_state = new_state.replace(batch_stats=updates["batch_stats"])
  grad_norm = optax.tree.norm(grads)
  # The new parameters are checked too: finite gradients can still produce a
  # non-finite update, and a checkpoint must never hold NaN weights.
  finite = (
    jnp.isfinite(loss)
    & jnp.isfinite(grad_norm)
    & jnp.isfinite(optax.tree.norm(new_state.params))
  )
  metrics = TrainMetrics.single_from_model_output(
    loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step)
  )
  return new_state, metrics, finite


def supervised_loss(
  state: TrainState,
  params: Any,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  loss_fn,
) -> tuple[jax.Array, Any, jax.Array]:
  """The batch-mean segmentation loss of ``params`` (deep supervision
  included), the model's variable updates and its float32 logits."""
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  logits, updates = state.apply_fn(
    variables,
    batch["image"],
    train=True,
    mutable=["batch_stats", "aux_logits"],
    rngs={"dropout": rng},
  )
  # Mixed precision: whatever the compute dtype, the loss is float32.
  logits = logits.astype(jnp.float32)
  loss = jnp.mean(
    loss_fn(logits, batch["label"], batch["mask"], **_loss_inputs(batch))
  )
  aux = jax.tree.leaves(updates.get("aux_logits", {}))
  if aux:
    loss = _deep_supervision_loss(loss, aux, batch, loss_fn)
  return loss, updates, logits


def _loss_inputs(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The batch arrays a loss reads besides label and mask (e.g. the signed
  distance maps of the boundary loss), when the pipeline added them."""
  return {k: batch[k] for k in losses_lib.EXTRA_INPUT_KEYS if k in batch}


def _deep_supervision_loss(
  main_loss: jax.Array,
  aux_logits: list[jax.Array],
  batch: dict[str, jax.Array],
  loss_fn,
) -> jax.Array:
  """nnU-Net-style deep supervision: the loss at each lower resolution
  (labels, mask and any distance maps subsampled by nearest neighbour)
  with weights halving per level, normalised so the weights sum to one.
  Distance maps keep their full-resolution voxel units, so every level's
  boundary term is on the same scale."""
  total, weight_sum = main_loss, 1.0
  labels, mask = batch["label"], batch["mask"]
  inputs = _loss_inputs(batch)
  ndim = labels.ndim - 1
  # Level k (finest first, as the models sow them) is at stride 2**k; a
  # strided slice of the labels is the nearest-neighbour subsampling, and
  # matches the model's ceil(S / 2**k) size when it padded its input.
  for level, logits in enumerate(aux_logits, start=1):
    window = (slice(None),) + (slice(None, None, 2**level),) * ndim
    weight = 0.5**level
    total = total + weight * jnp.mean(
      loss_fn(
        logits.astype(jnp.float32),
        labels[window],
        mask[window],
        **{k: v[window] for k, v in inputs.items()},
      )
    )
    weight_sum += weight
  return total / weight_sum


def _check_finite(finite: jax.Array, step: int, last_good: int | None) -> None:
  if not bool(jax.device_get(finite)):
    where = (
      f"the last good checkpoint (step {last_good}) is intact"
      if last_good is not None
      else "no checkpoint had been written yet"
    )
    raise NonFiniteLossError(
      f"Loss or gradient became NaN/Inf at step {step}; training stopped and "
      f"nothing after it was saved: {where}. Lower the learning rate, enable "
      f"config.optimizer.grad_clip_norm, or check the input data."
    )


def under_mesh(fn, mesh):
  """``fn`` called (and so traced) inside ``jax.set_mesh(mesh)``."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn(*args, **kwargs)

  return wrapped


def jit_step(step_fn, run: "Run", state_sharding):
  """``step_fn(state, batch, rng) -> (state, metrics, finite)`` compiled
  once: the state donated and replicated, batches split over ``"data"``
  (and depth, on a spatial mesh), traced under the mesh because the
  models' sharding constraints name its axes."""
  mesh = run.mesh
  replicated = sharding.replicated(mesh)
  return under_mesh(
    jax.jit(
      step_fn,
      in_shardings=(
        state_sharding,
        sharding.batch_sharding(mesh, run.spec.spatial_dims),
        replicated,
      ),
      out_shardings=(state_sharding, replicated, replicated),
      donate_argnums=(0,),
    ),
    mesh,
  )


def _host_metrics(metrics: TrainMetrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics.compute()).items()}


def _plan_patch(config: ml_collections.ConfigDict, data_dir: str) -> None:
  """Shrinks `config.data.patch_size` to the training cases' median shape
  (`plan.patch_for`), in place, and says so in the log; the choice is then
  saved with the config, so readers of the run use it without re-planning.
  """
  source = registry.data_source(
    config.dataset, config.train_split, data_dir, config.get("manual_dir")
  )
  median = plan.median_shape(source)
  patch, reason = plan.patch_for(
    median, config.data.patch_size, models_lib.pad_multiple(config)
  )
  config.data.patch_size = patch
  config.data.auto_patch = False
  config.data.patch_reason = reason
  logging.info("Training patch %s: %s.", patch, reason)


@dataclasses.dataclass
class Run:
  """What a trainer has built before its model: the resolved config, the
  segmentation model and loss, the optimizer, the mesh, the data iterator
  and the writer. Shared by this trainer and `train_adversarial`."""

  config: ml_collections.ConfigDict
  workdir: epath.Path
  spec: Any
  model: Any
  loss_fn: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  augment: Any
  augment_on: str
  writer: Any
  mesh: jax.sharding.Mesh
  eval_mesh: jax.sharding.Mesh
  train_iter: Any

  @property
  def data_dir(self) -> str:
    return self.config.data_dir


def prepare(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  outputs: int | None = None,
) -> Run:
  """Resolves and saves the config, checks names, builds the mesh and data.

  ``outputs``: the model's output channels; None for the dataset's classes
  (a supervised run, which refuses a label-free dataset). A
  self-supervised run (`train_ssl`) passes the image channels: its model
  reconstructs the image and never reads the labels.
  """
  workdir = checkpointing.absolute(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  # The resolved config, saved in the work dir: every reader of the run
  # (evaluate, predict) needs only --workdir. A work dir already holding
  # another model's run is refused before anything is built.
  config = config.copy_and_resolve_references()
  config.data_dir = str(checkpointing.absolute(config.data_dir))
  if run_config.path(workdir).exists():
    run_config.check_compatible(run_config.load(workdir), config, str(workdir))
  # Fail fast on bad names, before any data is built or compiled.
  spec = registry.get_dataset_spec(config.dataset, config.get("manual_dir"))
  if outputs is None and not spec.labelled:
    raise ValueError(
      f"Dataset {config.dataset!r} ({config.get('manual_dir') or ''}) has "
      'no labels (its dataset.json says "labelled": false), so it '
      "cannot train or evaluate a segmentation model; use it to pretrain "
      "with config.trainer='ssl' (docs/pretraining.md), or give the folder "
      'a labels/ folder and "labelled": true.'
    )
  model_spec = spec
  if outputs is not None:
    model_spec = dataclasses.replace(spec, num_classes=outputs)
  model = models_lib.from_config(config, model_spec)
  loss_fn = None  # A self-supervised run has its own loss (train_ssl).
  if outputs is None:
    loss_fn = losses_lib.from_config(
      config.loss, num_classes=spec.num_classes, spatial_dims=spec.spatial_dims
    )
    if "distance" in loss_fn.inputs:  # Maps made on the host: the module.
      distance_lib.check_config(config)
  tx, schedule = optimizers.create(config.optimizer, config.num_train_steps)
  augment_on = augment_lib.check_augment_on(config.get("augment_on", "device"))
  writer = writers.create_writer(
    str(workdir), config.get("writer", "tensorboard")
  )

  # --------------------------------------------------------------------------
  # Mesh: a "data" axis over every device of every process, and optionally a
  # "spatial" axis (config.mesh) that splits 3-D volumes along depth.
  # Evaluation runs on this process's devices alone (eval_mesh): each
  # process scores its own cases, and the results are gathered.
  # --------------------------------------------------------------------------
  mesh = sharding.make_mesh(axes=config.get("mesh", None))
  eval_mesh = sharding.local_mesh(mesh)
  local_batch_size = sharding.check_batch_size(config.batch_size, mesh)
  logging.info(
    "Mesh %s over %d devices, %d processes; global batch %d.",
    dict(mesh.shape),
    mesh.devices.size,
    jax.process_count(),
    config.batch_size,
  )

  # --------------------------------------------------------------------------
  # Data: build the TFDS dataset once (process 0), then every process opens
  # its own grain iterator over the ArrayRecord files.
  # --------------------------------------------------------------------------
  data_dir = config.data_dir
  if jax.process_index() == 0:
    registry.prepare(config.dataset, data_dir, config.get("manual_dir"))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices("dataset_prepared")
  if config.data.get("auto_patch"):
    _plan_patch(config, data_dir)
  if jax.process_index() == 0:
    run_config.save(config, workdir)
  augment_specs = list(config.get("augment", None) or [])
  augment = (
    augment_lib.build(augment_specs, spatial_shape=config.data.patch_size)
    if augment_specs
    else None
  )
  train_iter = iter(
    pipeline.train_dataset(config, data_dir, local_batch_size=local_batch_size)
  )
  return Run(
    config=config,
    workdir=workdir,
    spec=spec,
    model=model,
    loss_fn=loss_fn,
    tx=tx,
    schedule=schedule,
    augment=augment,
    augment_on=augment_on,
    writer=writer,
    mesh=mesh,
    eval_mesh=eval_mesh,
    train_iter=train_iter,
  )


def init_replicated(init_fn, key: jax.Array, mesh) -> tuple[Any, Any]:
  """``init_fn(key)`` computed straight into replicated buffers; returns the
  state and its sharding tree (the jitted step's in and out shardings)."""
  replicated = sharding.replicated(mesh)
  state_sharding = jax.tree.map(
    lambda _: replicated, jax.eval_shape(init_fn, key)
  )
  state = jax.jit(init_fn, out_shardings=state_sharding)(key)
  return state, state_sharding


def restore(
  run: Run, manager, state: TrainState
) -> tuple[TrainState, int | None]:
  """Initialises ``state`` in the order of the module docstring; returns it
  and the step of the checkpoint it resumed from (None: a fresh start).

  ``state`` may be any ``TrainState`` subclass: ``init_from`` replaces only
  its ``params`` and ``batch_stats``.
  """
  config, workdir, mesh = run.config, run.workdir, run.mesh
  latest = manager.latest_step()
  if latest is not None:
    logging.info("Resuming from %s step %d.", manager.directory, latest)
    try:
      state, iter_state = checkpointing.restore(manager, latest, state)
    except ValueError as e:
      raise ValueError(
        f"The checkpoint at step {latest} in {workdir} does not fit this "
        "config's model or optimizer (was the run started with another "
        "config?). Resume with the config it was trained with, or use a new "
        f"--workdir. Orbax says: {str(e)[:300]}"
      ) from e
    if iter_state:
      run.train_iter.set_state(iter_state)
  elif config.get("resume_from"):
    source = checkpointing.create_manager(
      epath.Path(config.resume_from) / "checkpoints", async_save=False
    )
    step = checkpointing.resolve_step(source, "latest")
    logging.info("Resuming from %s step %d.", config.resume_from, step)
    state, iter_state = checkpointing.restore(source, step, state)
    if iter_state:
      run.train_iter.set_state(iter_state)
  elif str(config.get("init_from", "")).endswith(TORCHVISION_SUFFIXES):
    state = _init_from_torchvision(state, config, run.spec, mesh, workdir)
  elif config.get("init_from"):
    params, batch_stats = checkpointing.load_params(config.init_from)
    options = dict(
      include=list(config.get("init_include", None) or []),
      exclude=list(config.get("init_exclude", None) or []),
      rename=[tuple(pair) for pair in config.get("init_rename", None) or []],
      upkern=bool(config.get("init_upkern", False)),
    )
    new_params, report = transfer.merge(state.params, params, **options)
    new_stats, _ = transfer.merge(state.batch_stats, batch_stats, **options)
    summary = report.summary()
    from medseg_jax import train_ssl  # pylint: disable=g-import-not-at-top

    pretraining = train_ssl.read_metadata(config.init_from)
    if pretraining is not None:  # A self-supervised run's weights.
      summary = (
        f"pretrained by {pretraining['pretext']} for {pretraining['steps']} "
        f"steps on {pretraining['dataset']} {pretraining['train_split']} "
        f"{pretraining['manual_dir']}\n{summary}"
      )
    logging.info("init_from %s: %s", config.init_from, summary)
    state = state.replace(
      params=sharding.replicate(new_params, mesh),
      batch_stats=sharding.replicate(new_stats, mesh),
    )
    if jax.process_index() == 0:
      (workdir / "init_from_report.txt").write_text(summary + "\n")
  return state, latest


def make_validate(run: Run):
  """``validate(state, split, final=False)`` -> a ``report`` result."""
  config = run.config
  # Validation and the final report use the one predictor of `evaluate` and
  # `predict` (config.eval: padding to the patch, sliding windows, flip TTA,
  # post-processing), compiled once; each process scores its own cases on
  # its own devices, and the results are gathered.
  predictor = case_predictor.CasePredictor.from_config(
    config, run.model, mesh=run.eval_mesh
  )

  def validate(current: TrainState, split: str, final: bool = False):
    return report_lib.evaluate(
      config,
      predictor.with_variables(
        sharding.to_local(variables_of(current), run.eval_mesh)
      ),
      run.data_dir,
      split,
      # The final report adds surface distances; validation stays cheap.
      surface_metrics=final and config.eval.surface_metrics,
      keep_arrays=final,
      leave=final,
    )

  return validate


def train_loop(
  run: Run,
  state: TrainState,
  train_step,
  step_rng: jax.Array,
  manager,
  validate,
  last_good: int | None,
) -> tuple[TrainState, int]:
  """Steps, logs, validates and checkpoints until ``num_train_steps`` or a
  stop request; returns the state and the step reached.

  ``train_step(state, batch, step_rng) -> (state, metrics, finite)`` with
  ``metrics`` a ``clu`` collection that has a ``loss``. ``validate`` None
  (a self-supervised run, which has no labels to score): no validation,
  and the evaluation steps only checkpoint.
  """
  config, mesh, writer = run.config, run.mesh, run.writer
  train_iter, spatial_dims = run.train_iter, run.spec.spatial_dims
  step = int(jax.device_get(state.step))
  num_steps = config.num_train_steps
  # One bar on process 0's console (a few plain lines in a file or CI log);
  # the scalars go to the writer, the validation line to the log.
  bar = console.TrainProgress(
    num_steps, initial=step, enabled=jax.process_index() == 0
  )
  train_metrics = None
  pending_finite = None  # Checked one step late so dispatch stays async.
  start = loop_start = time.time()
  if step == 0:
    writer.write_hparams(run_config.flattened(config))
  # The finally clause lets an async save of a good state finish even when
  # the loop stops on an error (e.g. a NaN loss) right after it.
  with _StopSignal() as stop, _finish_saves(manager), bar:
    while step < num_steps:
      batch = sharding.to_global_batch(next(train_iter), mesh, spatial_dims)
      state, metrics, finite = train_step(state, batch, step_rng)
      step += 1
      if pending_finite is not None:
        _check_finite(pending_finite[1], pending_finite[0], last_good)
      pending_finite = (step, finite)
      train_metrics = (
        metrics if train_metrics is None else train_metrics.merge(metrics)
      )

      is_last = step == num_steps
      if step % config.log_every_steps == 0 or is_last:
        values = _host_metrics(train_metrics)
        values["steps_per_sec"] = config.log_every_steps / max(
          time.time() - start, 1e-9
        )
        scalars = {f"train/{k}": v for k, v in values.items()}
        # This process's training time so far (the benchmarks read it).
        scalars["uptime"] = time.time() - loop_start
        writer.write_scalars(step, scalars)
        train_metrics, start = None, time.time()
        bar.set_loss(values["loss"])
      bar.update()

      is_eval = step % config.eval_every_steps == 0 or is_last
      # Read once: a SIGTERM landing later in this step must not make the
      # loop stop without the save that this decision would have made.
      stopping = stop.requested or manager.reached_preemption(step)
      is_save = step % config.checkpoint_every_steps == 0 or is_eval or stopping
      if is_save:
        _check_finite(finite, step, last_good)
      ckpt_metrics = None
      if is_eval and validate is not None:
        result = validate(state, config.eval_split)
        summary = result.summary()
        scalars = {
          "val/mean_foreground_dice": summary["mean_foreground_dice"],
          "val/pooled_foreground_dice": summary["pooled_foreground_dice"],
        }
        for name, entry in summary["per_class"].items():
          scalars[f"val/dice_{name}"] = entry["dice"]["mean"]
        writer.write_scalars(step, scalars)
        ckpt_metrics = {
          checkpointing.BEST_METRIC: summary["mean_foreground_dice"]
        }
        logging.info(
          "step %d: validation mean foreground Dice %.4f",
          step,
          summary["mean_foreground_dice"],
        )
      if is_save:
        checkpointing.save(
          manager, step, state, train_iter.get_state(), ckpt_metrics
        )
        last_good = step
      # Test hook (tests/train_test.py): MEDSEG_FAULT_AT_STEP=N kills the
      # process as a crash would, right after step N's save has started.
      if str(step) == os.environ.get("MEDSEG_FAULT_AT_STEP"):
        signal.raise_signal(signal.SIGKILL)
      if stopping:
        logging.warning("Stopping at step %d after a checkpoint.", step)
        break
    if pending_finite is not None:
      _check_finite(pending_finite[1], pending_finite[0], last_good)
  manager.wait_until_finished()
  writer.flush()
  return state, step


def final_report(
  run: Run, state: TrainState, manager, validate, step: int
) -> dict[str, Any]:
  """Evaluates the held-out split with the best checkpoint and writes the
  report; returns its summary."""
  best = checkpointing.resolve_step(manager, "best")
  if best != step:
    state, _ = checkpointing.restore(manager, best, state)
  summary = report_lib.write(
    run.config,
    validate(state, run.config.test_split, final=True),
    run.workdir / "eval",
    split=run.config.test_split,
    step=best,
    checkpoint="best",
    writer=run.writer,
  )
  run.writer.close()
  return summary


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains, checkpoints and evaluates; returns the test-split summary."""
  # Config, names, mesh and data (shared with train_adversarial).
  run = prepare(config, workdir)
  config, spec, mesh = run.config, run.spec, run.mesh

  # --------------------------------------------------------------------------
  # Model and optimizer.
  # --------------------------------------------------------------------------
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  patch = tuple(config.data.patch_size)
  sample = jnp.zeros((1, *patch, spec.num_channels), jnp.float32)

  def init_state(key):
    variables = run.model.init(key, sample, train=False)
    return TrainState.create(
      apply_fn=run.model.apply,
      params=variables["params"],
      tx=run.tx,
      batch_stats=variables.get("batch_stats", {}),
    )

  state, state_sharding = init_replicated(init_state, init_rng, mesh)
  groups = list(config.optimizer.get("param_groups", None) or [])
  if groups:
    transfer.check_groups(state.params, groups)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Model %s: %d parameters.", config.model.name, num_params)

  # --------------------------------------------------------------------------
  # Restore, in the order of the module docstring.
  # --------------------------------------------------------------------------
  manager = checkpointing.create_manager(
    run.workdir / "checkpoints", keep=config.get("keep_checkpoints", 3)
  )
  state, last_good = restore(run, manager, state)

  # --------------------------------------------------------------------------
  # Jitted functions: the state is donated so its buffers are reused.
  # --------------------------------------------------------------------------
  # With augment_on="host" the input pipeline has already augmented the
  # batch, with the key this step would use (medseg_jax/augment/host.py).
  if run.augment is not None:
    logging.info("Augmentation on the %s: %s.", run.augment_on, run.augment.ops)
  train_step = jit_step(
    functools.partial(
      _train_step,
      loss_fn=run.loss_fn,
      schedule=run.schedule,
      augment=run.augment if run.augment_on == "device" else None,
    ),
    run,
    state_sharding,
  )
  validate = make_validate(run)

  # --------------------------------------------------------------------------
  # Training loop.
  # --------------------------------------------------------------------------
  state, step = train_loop(
    run, state, train_step, step_rng, manager, validate, last_good
  )
  if step < config.num_train_steps:
    return {"stopped_at_step": step}

  # --------------------------------------------------------------------------
  # Final evaluation of the held-out split with the best checkpoint.
  # --------------------------------------------------------------------------
  return final_report(run, state, manager, validate, step)
