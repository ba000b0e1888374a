"""Self-supervised pretext tasks: corrupt an image, learn to restore it.

Each task is a pure, jittable function of one example with its own key,
2-D or 3-D, ``task(key, image: f32[*S, C], **options) -> (corrupted:
f32[*S, C], weight: f32[*S])``: the network sees ``corrupted`` and is
trained to output the clean ``image`` where ``weight`` is nonzero
(everywhere for the Models Genesis restorations, on the hidden patches for
masked image modelling). `Pretext` applies a task to a batch, one key per
example, and `reconstruction_loss` scores the restoration. The trainer is
`medseg_jax.train_ssl` (``config.trainer = "ssl"``); the recipe and the
results are in docs/pretraining.md.

  >>> pretext = get_pretext("models_genesis")
  >>> inputs = pretext(key, batch["image"])   # image, target, weight
  >>> loss = reconstruction_loss(model(inputs["image"]), inputs["target"],
  ...                            inputs["weight"])
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from medseg_jax.pretext import genesis
from medseg_jax.pretext import masking


def _restoration(fn: Callable[..., jax.Array]) -> Callable[..., Any]:
  """A corruption ``fn(key, image) -> image`` as a task with weight 1."""

  def task(key, image, **options):
    return fn(key, image, **options), jnp.ones(image.shape[:-1], jnp.float32)

  task.__doc__ = fn.__doc__
  task.options = _options(fn)
  return task


def _options(fn: Callable[..., Any]) -> tuple[str, ...]:
  parameters = inspect.signature(fn).parameters.values()
  return tuple(p.name for p in parameters if p.kind is p.KEYWORD_ONLY)


def _masked(fn: Callable[..., Any]) -> Callable[..., Any]:
  fn.options = _options(fn)
  return fn


# name -> task(key, image, **options) -> (corrupted, weight).
PRETEXTS: dict[str, Callable[..., Any]] = {
  "models_genesis": _restoration(genesis.models_genesis),
  "intensity_curve": _restoration(genesis.intensity_curve),
  "local_shuffle": _restoration(genesis.local_shuffle),
  "in_painting": _restoration(genesis.in_painting),
  "out_painting": _restoration(genesis.out_painting),
  "simmim": _masked(masking.simmim),
}

# Reconstruction distances of `reconstruction_loss`.
LOSSES = ("mse", "l1")


@dataclasses.dataclass(frozen=True)
class Pretext:
  """A pretext task with its options, applied to batches.

  Attributes:
    name: a key of `PRETEXTS`.
    options: the task's keyword options, as ``(name, value)`` pairs.
  """

  name: str
  options: tuple[tuple[str, Any], ...] = ()

  def example(
    self, key: jax.Array, image: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """``(corrupted f32[*S, C], weight f32[*S])`` of one example."""
    return PRETEXTS[self.name](key, image, **dict(self.options))

  def __call__(self, key: jax.Array, images: jax.Array) -> dict[str, Any]:
    """Corrupts a batch, one key per example.

    Args:
      key: PRNG key of the batch.
      images: ``f32[B, *S, C]``, the clean images.

    Returns:
      ``image``: ``f32[B, *S, C]`` corrupted; ``target``: ``images``
      themselves; ``weight``: ``f32[B, *S]``, where the loss counts.
    """
    keys = jax.random.split(key, images.shape[0])
    corrupted, weight = jax.vmap(self.example)(keys, images)
    return {"image": corrupted, "target": images, "weight": weight}


def get_pretext(name: str, **options: Any) -> Pretext:
  """The task ``name`` with ``options``.

  Raises:
    ValueError: for an unknown task or option; the message lists the
      valid ones.
  """
  if name not in PRETEXTS:
    raise ValueError(
      f"Unknown pretext task {name!r}; valid: {sorted(PRETEXTS)}."
    )
  valid = PRETEXTS[name].options
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(
      f"Pretext task {name!r} has no option(s) {unknown}; valid: "
      f"{sorted(valid)}."
    )
  items = tuple(
    (k, tuple(v) if isinstance(v, list) else v)
    for k, v in sorted(options.items())
  )
  return Pretext(name=name, options=items)


def from_config(ssl: Any) -> Pretext:
  """The task of ``config.ssl`` (``pretext`` and ``options``)."""
  return get_pretext(ssl.pretext, **dict(ssl.get("options", None) or {}))


def reconstruction_loss(
  prediction: jax.Array,
  target: jax.Array,
  weight: jax.Array,
  kind: str = "mse",
) -> jax.Array:
  """Per-example weighted mean reconstruction error.

  ``sum_v w_v * mean_c d(p_vc, t_vc) / sum_v w_v`` with ``d`` the squared
  (``"mse"``) or absolute (``"l1"``) difference; an example with no
  weight scores 0.

  Args:
    prediction: ``f32[B, *S, C]``.
    target: ``f32[B, *S, C]``.
    weight: ``f32[B, *S]`` (e.g. the pretext weight times the padding mask).
    kind: one of `LOSSES`.

  Returns:
    ``f32[B]``.
  """
  if kind not in LOSSES:
    raise ValueError(f"Unknown reconstruction loss {kind!r}; valid: {LOSSES}.")
  if prediction.shape != target.shape:
    raise ValueError(
      f"prediction {prediction.shape} and target {target.shape} differ."
    )
  diff = prediction.astype(jnp.float32) - target.astype(jnp.float32)
  error = jnp.square(diff) if kind == "mse" else jnp.abs(diff)
  error = jnp.mean(error, axis=-1)
  axes = tuple(range(1, error.ndim))
  total = jnp.sum(error * weight, axis=axes)
  return total / jnp.maximum(jnp.sum(weight, axis=axes), 1e-6)
