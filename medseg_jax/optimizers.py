"""Optimizers and learning-rate schedules from a config, via optax.

``config.optimizer`` fields: ``name`` (see ``OPTIMIZERS``),
``learning_rate``, ``schedule`` (see ``SCHEDULES``), ``warmup_steps``,
``weight_decay`` (adamw only), ``momentum`` (sgd only) and
``grad_clip_norm`` (0 disables) and ``param_groups`` (freezing and
per-group learning rates by parameter-name pattern, see ``transfer``).
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
import optax

from medseg_jax import transfer


def _constant(lr: float, steps: int, warmup: int) -> optax.Schedule:
  del steps
  if warmup:
    return optax.linear_schedule(0.0, lr, warmup)
  return optax.constant_schedule(lr)


def _cosine(lr: float, steps: int, warmup: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0 if warmup else lr,
    peak_value=lr,
    warmup_steps=warmup,
    decay_steps=max(steps, warmup + 1),
    end_value=lr * 1e-2,
  )


def _poly(lr: float, steps: int, warmup: int) -> optax.Schedule:
  # nnU-Net's schedule: lr * (1 - t / T) ** 0.9.
  decay = optax.polynomial_schedule(lr, 0.0, 0.9, max(steps - warmup, 1))
  if not warmup:
    return decay
  return optax.join_schedules(
    [optax.linear_schedule(0.0, lr, warmup), decay], [warmup]
  )


SCHEDULES: dict[str, Callable[[float, int, int], optax.Schedule]] = {
  "constant": _constant,
  "cosine": _cosine,
  "poly": _poly,
}


def _adam(config, schedule):
  return optax.adam(schedule)


def _adamw(config, schedule):
  return optax.adamw(schedule, weight_decay=config.get("weight_decay", 1e-4))


def _sgd(config, schedule):
  return optax.sgd(
    schedule, momentum=config.get("momentum", 0.99), nesterov=True
  )


OPTIMIZERS = {"adam": _adam, "adamw": _adamw, "sgd": _sgd}


def create(
  config: ml_collections.ConfigDict, num_train_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns ``(tx, schedule)`` for ``config.optimizer``."""
  name = config.get("name", "adamw")
  if name not in OPTIMIZERS:
    raise ValueError(
      f"Unknown optimizer {name!r}; valid: {sorted(OPTIMIZERS)}."
    )
  schedule_name = config.get("schedule", "cosine")
  if schedule_name not in SCHEDULES:
    raise ValueError(
      f"Unknown schedule {schedule_name!r}; valid: {sorted(SCHEDULES)}."
    )
  schedule = SCHEDULES[schedule_name](
    config.learning_rate, num_train_steps, config.get("warmup_steps", 0)
  )
  groups = list(config.get("param_groups", None) or [])
  if groups:
    tx = transfer.grouped_optimizer(
      lambda sched: OPTIMIZERS[name](config, sched), schedule, groups
    )
  else:
    tx = OPTIMIZERS[name](config, schedule)
  clip = config.get("grad_clip_norm", 0.0)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx, schedule
