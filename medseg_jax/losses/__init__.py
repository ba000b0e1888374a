"""Segmentation losses and the name -> function registry.

Every loss has the signature `loss(logits, labels, mask=None, **options) ->
f32[B]`; `get_loss` binds the options from a config:

  >>> loss_fn = get_loss("ce_dice", dice_weight=0.5)
  >>> per_example = loss_fn(logits, labels, mask)
"""

import functools
import inspect
from collections.abc import Callable

import jax

from medseg_jax.losses.segmentation import ce_dice
from medseg_jax.losses.segmentation import cross_entropy
from medseg_jax.losses.segmentation import soft_dice

LossFn = Callable[..., jax.Array]

LOSSES: dict[str, LossFn] = {
  "cross_entropy": cross_entropy,
  "dice": soft_dice,
  "ce_dice": ce_dice,
}


def get_loss(name: str, **kwargs) -> LossFn:
  """Returns the loss registered as `name` with `kwargs` bound.

  Args:
    name: a key of `LOSSES`.
    **kwargs: keyword options of that loss, e.g. `include_background=True`.

  Returns:
    `fn(logits, labels, mask=None) -> f32[B]`.

  Raises:
    ValueError: if `name` is not registered; the message lists valid names.
    TypeError: if a keyword is not an option of that loss (checked now, not
      at the first call).
  """
  try:
    fn = LOSSES[name]
  except KeyError:
    raise ValueError(
      f"Unknown loss {name!r}; valid names: {sorted(LOSSES)}."
    ) from None
  if not kwargs:
    return fn
  try:
    inspect.signature(fn).bind_partial(**kwargs)
  except TypeError as e:
    raise TypeError(f"Bad options for loss {name!r}: {e}") from None
  return functools.partial(fn, **kwargs)


__all__ = ["LOSSES", "ce_dice", "cross_entropy", "get_loss", "soft_dice"]
