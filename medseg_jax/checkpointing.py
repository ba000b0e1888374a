"""Orbax checkpoints of the train state together with the data iterator.

Every checkpoint step directory holds two items:

* ``state``: the full train state pytree (params, optimizer state, batch
  statistics, step), saved with ``StandardSave`` so each array keeps its
  sharding on restore;
* ``data_iter``: the grain iterator state as JSON, taken at the moment of the
  save call, so a resumed run reads exactly the batches the original run
  would have read next.

Orbax writes each step into a temporary directory and renames it when all
items are complete, so a crash (even SIGKILL) during a save never leaves a
half-written checkpoint that a restart would pick up.

Retention: the latest ``keep`` checkpoints, plus the one with the best
validation Dice among the checkpoints that were saved with metrics.
"""

from __future__ import annotations

import dataclasses
import logging as py_logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as cm

BEST_METRIC = "val_dice"


def absolute(path: str | epath.PathLike) -> epath.Path:
  """Orbax needs absolute paths; cloud paths (``gs://...``) are left as is."""
  text = os.fspath(path)
  if "://" in text:
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def _best_metric(metrics: dict[str, Any]) -> float:
  return float(metrics[BEST_METRIC])


def create_manager(
  directory: str | epath.Path,
  *,
  keep: int = 3,
  async_save: bool = True,
  track_best: bool = True,
) -> ocp.CheckpointManager:
  """Returns a CheckpointManager for ``state`` and ``data_iter`` items.

  ``track_best`` False (a run without validation, e.g. self-supervised
  pretraining): only the latest ``keep`` are kept.
  """
  policies = [cm.preservation_policy.LatestN(n=keep)]
  if track_best:
    policies.append(
      cm.preservation_policy.BestN(
        get_metric_fn=_best_metric,
        reverse=False,  # Ascending sort; the last entries are the highest.
        n=1,
        keep_checkpoints_without_metrics=False,
      )
    )
  options = ocp.CheckpointManagerOptions(
    preservation_policy=cm.AnyPreservationPolicy(policies),
    # best_fn also makes Orbax write the metrics next to each checkpoint.
    best_fn=_best_metric if track_best else None,
    best_mode="max",
    enable_async_checkpointing=async_save,
    create=True,
  )
  return ocp.CheckpointManager(
    absolute(directory),
    options=options,
    item_names=("state", "data_iter"),
  )


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state: Any,
  data_iter_state: dict[str, Any] | None,
  metrics: dict[str, float] | None = None,
  *,
  force: bool = True,
) -> bool:
  """Saves ``state`` and the iterator state at ``step``.

  ``data_iter_state`` must be captured by the caller right after the last
  batch consumed by ``state`` was drawn (``iterator.get_state()``).
  """
  items = {"state": ocp.args.StandardSave(state)}
  items["data_iter"] = ocp.args.JsonSave(data_iter_state or {})
  return manager.save(
    step,
    args=ocp.args.Composite(**items),
    metrics=metrics,
    force=force,
  )


def abstract_like(state: Any) -> Any:
  """Shape/dtype/sharding skeleton of ``state`` used as a restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def restore(
  manager: ocp.CheckpointManager, step: int, state_like: Any
) -> tuple[Any, dict[str, Any]]:
  """Restores ``(state, data_iter_state)`` at ``step`` onto ``state_like``'s
  shardings."""
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_like(state_like)),
      data_iter=ocp.args.JsonRestore(),
    ),
  )
  return restored["state"], dict(restored["data_iter"] or {})


def best_step(manager: ocp.CheckpointManager) -> int | None:
  """The step with the highest validation Dice, or None if none has one."""
  best, best_value = None, None
  for step in manager.all_steps():
    metrics = manager.metrics(step)
    if not metrics or BEST_METRIC not in metrics:
      continue
    value = float(metrics[BEST_METRIC])
    if best_value is None or value > best_value:
      best, best_value = step, value
  return best


def resolve_step(manager: ocp.CheckpointManager, which: str) -> int:
  """Maps ``"latest"``, ``"best"`` or a step number to a saved step."""
  steps = list(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"No checkpoint in {manager.directory}.")
  if which == "latest":
    return max(steps)
  if which == "best":
    step = best_step(manager)
    if step is None:
      logging.warning("No checkpoint has %s; using the latest.", BEST_METRIC)
      return max(steps)
    return step
  try:
    step = int(which)
  except ValueError:
    raise ValueError(
      f"checkpoint must be 'latest', 'best' or a step number, got {which!r}."
    ) from None
  if step not in steps:
    raise ValueError(f"No checkpoint at step {step}; saved steps: {steps}.")
  return step


def load_params(
  directory: str | epath.Path, which: str = "latest"
) -> tuple[Any, Any]:
  """Reads ``(params, batch_stats)`` (host numpy) from a run's checkpoints.

  Used for ``config.init_from``: only the weights are taken, not the
  optimizer, step or data position.
  """
  params, batch_stats, _ = load_weights(directory, which)
  return params, batch_stats


def load_weights(
  directory: str | epath.Path, which: str = "latest"
) -> tuple[Any, Any, int]:
  """Reads ``(params, batch_stats, step)`` of checkpoint ``which``.

  Args:
    directory: a run's work dir, or its ``checkpoints`` folder.
    which: ``"latest"``, ``"best"`` (highest validation Dice) or a step.
  """
  state, step = load_state(directory, which)
  if "params" not in state:
    raise ValueError(f"Checkpoint {directory}/{step} has no 'params'.")
  return state["params"], state.get("batch_stats") or {}, step


def load_state(
  directory: str | epath.Path, which: str = "latest"
) -> tuple[dict[str, Any], int]:
  """Reads the whole saved state of checkpoint ``which`` as a nested dict
  of host-readable arrays (e.g. an adversarial run's ``critic`` too), and
  its step; arguments as for ``load_weights``."""
  directory = absolute(directory)
  if (directory / "checkpoints").exists():
    directory = directory / "checkpoints"
  # Orbax warns about every read-only manager it makes; the options below
  # are the ones read-only implies, and its last warning is held back.
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(py_logging.ERROR)
  try:
    manager = ocp.CheckpointManager(
      directory,
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "data_iter": ocp.JsonCheckpointHandler(),
      },
      options=ocp.CheckpointManagerOptions(
        read_only=True, save_interval_steps=0, create=False
      ),
    )
  finally:
    absl_logger.setLevel(level)
  step = resolve_step(manager, which)
  # Onto one local device, whatever mesh saved it (e.g. a multi-process
  # run's): the saved shardings name devices this process may not have.
  device = jax.sharding.make_single_device_sharding(jax.local_devices()[0])
  metadata = manager.item_metadata(step)["state"]
  target = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
    getattr(metadata, "tree", metadata),
  )
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
  )
  state = restored["state"]
  if dataclasses.is_dataclass(state):
    state = dataclasses.asdict(state)
  return state, step
