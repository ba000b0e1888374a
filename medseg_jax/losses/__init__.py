"""Segmentation losses, the name -> function registry and weighted sums.

Every loss has the signature `loss(logits, labels, mask=None, **options) ->
f32[B]` (the boundary loss also takes `distance=`, the signed distance
maps); `get_loss` binds the options of one loss:

  >>> loss_fn = get_loss("ce_dice", dice_weight=0.5)
  >>> per_example = loss_fn(logits, labels, mask)

A config's `config.loss` names one loss with its options, or a weighted
sum of terms; `from_config` turns either into one `WeightedSum`, checking
names, options and values when the config is read:

  config.loss.name = "ce_dice"          # plus options, e.g. dice_weight=1.0
  config.loss = ml_collections.ConfigDict(dict(terms=[
    dict(name="cross_entropy", weight=1.0),
    dict(name="cldice", weight=0.5, iterations=3),
  ]))

See docs/losses.md for the formulas.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from medseg_jax.losses.boundary_loss import boundary
from medseg_jax.losses.segmentation import ce_dice
from medseg_jax.losses.segmentation import cross_entropy
from medseg_jax.losses.segmentation import focal
from medseg_jax.losses.segmentation import focal_tversky
from medseg_jax.losses.segmentation import generalized_dice
from medseg_jax.losses.segmentation import soft_dice
from medseg_jax.losses.segmentation import tversky
from medseg_jax.losses.topology import cldice
from medseg_jax.losses.topology import soft_skeleton

LossFn = Callable[..., jax.Array]

LOSSES: dict[str, LossFn] = {
  "cross_entropy": cross_entropy,
  "dice": soft_dice,
  "ce_dice": ce_dice,
  "focal": focal,
  "tversky": tversky,
  "focal_tversky": focal_tversky,
  "generalized_dice": generalized_dice,
  "cldice": cldice,
  "boundary": boundary,
}
# Losses that read more of the batch than logits, labels and mask: the name
# -> the batch keys, passed as keyword arguments of the same name.
EXTRA_INPUTS: dict[str, tuple[str, ...]] = {"boundary": ("distance",)}
# Keyword arguments that come from the batch, never from a config.
EXTRA_INPUT_KEYS: tuple[str, ...] = tuple(
  sorted({k for keys in EXTRA_INPUTS.values() for k in keys})
)


def _lookup(name: Any) -> LossFn:
  try:
    return LOSSES[name]
  except (KeyError, TypeError):
    raise ValueError(
      f"Unknown loss {name!r}; valid names: {sorted(LOSSES)}."
    ) from None


def options(name: str) -> tuple[str, ...]:
  """The config options of loss `name` (its keyword-only parameters)."""
  params = inspect.signature(_lookup(name)).parameters.values()
  return tuple(
    p.name
    for p in params
    if p.kind is p.KEYWORD_ONLY and p.name not in EXTRA_INPUT_KEYS
  )


def get_loss(name: str, **kwargs) -> LossFn:
  """Returns the loss registered as `name` with `kwargs` bound.

  Args:
    name: a key of `LOSSES`.
    **kwargs: keyword options of that loss, e.g. `include_background=True`.

  Returns:
    `fn(logits, labels, mask=None) -> f32[B]` (plus `distance=` for the
    boundary loss).

  Raises:
    ValueError: if `name` is not registered; the message lists valid names.
    TypeError: if a keyword is not an option of that loss (checked now, not
      at the first call); the message lists its options.
  """
  fn = _lookup(name)
  if not kwargs:
    return fn
  unknown = sorted(set(kwargs) - set(options(name)))
  if unknown:
    raise TypeError(
      f"Bad options for loss {name!r}: {unknown}; its options are "
      f"{list(options(name))}."
    )
  return functools.partial(fn, **kwargs)


@dataclasses.dataclass(frozen=True)
class WeightedSum:
  """`sum_k weight_k * loss_k(logits, labels, mask, ...)`, per example.

  Attributes:
    terms: `(name, weight, fn)` per term, `fn` with its options bound.
  """

  terms: tuple[tuple[str, float, LossFn], ...]

  @property
  def inputs(self) -> tuple[str, ...]:
    """Batch keys the terms need besides label and mask (e.g. distance)."""
    keys = []
    for name, _, _ in self.terms:
      keys += [k for k in EXTRA_INPUTS.get(name, ()) if k not in keys]
    return tuple(keys)

  def __call__(
    self,
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike | None = None,
    **inputs: jax.typing.ArrayLike,
  ) -> jax.Array:
    """Args: `logits: f32[B, *S, C]`, `labels: int[B, *S]`, `mask:
    [B, *S]` and the extra `inputs` (e.g. `distance: f32[B, *S, C]`).
    Returns `f32[B]`."""
    total = None
    for name, weight, fn in self.terms:
      keys = EXTRA_INPUTS.get(name, ())
      missing = [k for k in keys if inputs.get(k) is None]
      if missing:
        raise ValueError(
          f"Loss term {name!r} needs {missing} from the batch (the input "
          "pipeline adds them when the config's loss needs them)."
        )
      value = weight * fn(logits, labels, mask, **{k: inputs[k] for k in keys})
      total = value if total is None else total + value
    return total


def _term(spec: Mapping[str, Any], where: str) -> tuple[str, float, LossFn]:
  spec = dict(spec)
  name = spec.pop("name", None)
  weight = spec.pop("weight", 1.0)
  if name not in LOSSES:
    raise ValueError(
      f"{where}: unknown loss {name!r}; valid names: {sorted(LOSSES)}."
    )
  if (
    isinstance(weight, bool)
    or not isinstance(weight, int | float)
    or not math.isfinite(weight)
    or weight < 0
  ):
    raise ValueError(
      f"{where}: weight must be a finite number >= 0, got {weight!r}."
    )
  try:
    fn = get_loss(name, **spec)
  except TypeError as e:
    raise ValueError(f"{where}: {e}") from None
  return name, float(weight), fn


def from_config(
  loss_config: Mapping[str, Any],
  *,
  num_classes: int | None = None,
  spatial_dims: int | None = None,
) -> WeightedSum:
  """The loss of `config.loss`, checked now rather than at the first step.

  `loss_config` is either `dict(name=NAME, **options)` (one loss) or
  `dict(terms=[dict(name=NAME, weight=W, **options), ...])` (a weighted
  sum; `weight` defaults to 1; when `terms` is set, `name` is not read,
  so `config.loss.terms = [...]` works on top of the base config's
  `name="ce_dice"`). With `num_classes` and `spatial_dims`,
  the loss is also traced once on a small abstract input, so bad option
  values (e.g. a negative `gamma`, too few `alpha` weights) fail here.

  Args:
    loss_config: `config.loss` (a ConfigDict or a mapping).
    num_classes: the dataset's number of classes `C`, for the trace.
    spatial_dims: 2 or 3, for the trace.

  Returns:
    A `WeightedSum`; call it as `loss(logits, labels, mask, **inputs)`,
    with `inputs` the batch keys of its `inputs` property.

  Raises:
    ValueError: for an unknown name (listing the valid names), an unknown
      option (listing the valid options), a bad weight or option value,
      or single-loss options beside `terms`.
  """
  if hasattr(loss_config, "to_dict"):
    loss_config = loss_config.to_dict()
  loss_config = dict(loss_config)
  terms = loss_config.get("terms")
  if terms:
    # `terms` is the loss; `name` (the base config's single-loss default)
    # is then unused. Options of a single loss beside `terms` would be
    # silently unused too, so they are an error.
    others = sorted(k for k in loss_config if k not in ("terms", "name"))
    if others:
      raise ValueError(
        f"config.loss has both terms and {others}: options go inside each "
        "term, terms=[dict(name=NAME, weight=W, **options), ...]."
      )
    if isinstance(terms, Mapping) or isinstance(terms, str):
      raise ValueError(
        f"config.loss.terms must be a list of dicts, got {terms!r}."
      )
    parsed = tuple(
      _term(spec, f"config.loss.terms[{i}]") for i, spec in enumerate(terms)
    )
  else:
    spec = {k: v for k, v in loss_config.items() if k != "terms"}
    if spec.get("weight") is not None:
      raise ValueError(
        "config.loss.weight is only meaningful inside config.loss.terms."
      )
    parsed = (_term(spec, "config.loss"),)
  loss = WeightedSum(parsed)
  if num_classes is not None and spatial_dims is not None:
    shape = (1,) + (8,) * spatial_dims
    inputs = {
      k: jax.ShapeDtypeStruct(shape + (num_classes,), jnp.float32)
      for k in loss.inputs
    }
    try:
      jax.eval_shape(
        loss,
        jax.ShapeDtypeStruct(shape + (num_classes,), jnp.float32),
        jax.ShapeDtypeStruct(shape, jnp.int32),
        jax.ShapeDtypeStruct(shape, jnp.float32),
        **inputs,
      )
    except (ValueError, TypeError) as e:
      raise ValueError(f"config.loss: {e}") from None
  return loss


__all__ = [
  "EXTRA_INPUTS",
  "EXTRA_INPUT_KEYS",
  "LOSSES",
  "WeightedSum",
  "boundary",
  "ce_dice",
  "cldice",
  "cross_entropy",
  "focal",
  "focal_tversky",
  "from_config",
  "generalized_dice",
  "get_loss",
  "options",
  "soft_dice",
  "soft_skeleton",
  "tversky",
]
