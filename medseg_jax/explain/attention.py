"""Attention U-Net gate coefficients as explanation maps.

`models.attention_unet.AttentionUNet` sows each gate's coefficients
`alpha in [0, 1]` (Oktay et al. 2018); `models.attention_unet.
attention_maps` collects them at the input size. Here they are exposed with
the signature of the other methods. The gates do not depend on a class, so
the target is accepted and ignored.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax.explain import targets
from medseg_jax.models import attention_unet

MEAN = "mean"


def gate_names(model: nn.Module) -> tuple[str, ...]:
  """The gate names `attention` accepts for `model`, finest first, plus
  `"mean"`.

  Raises:
    ValueError: if the model has no attention gates (the message names the
      models that do).
  """
  if not isinstance(model, attention_unet.AttentionUNet):
    raise ValueError(
      f"{type(model).__name__} has no attention gates; the attention method "
      "needs config.model.name='attention_unet' (models with gates: "
      "['attention_unet'])."
    )
  levels = model.gated_levels()
  return (*(attention_unet.attention_name(k) for k in levels), MEAN)


def attention(
  model: nn.Module,
  variables: Any,
  image: jax.typing.ArrayLike,
  target: targets.Target | None = None,
  *,
  gate: str | None = None,
) -> jax.Array:
  """One gate's coefficients (or their mean) at the input size.

  Args:
    model: an `AttentionUNet`.
    variables: its variables.
    image: `f32[B, *S, C]`.
    target: ignored (the gates are class-agnostic).
    gate: a name of `gate_names` (`"attention_{level}"` or `"mean"`);
      default the finest gate.

  Returns:
    `f32[B, *S]` in [0, 1].
  """
  del target
  names = gate_names(model)
  gate = gate or names[0]
  if gate not in names:
    raise ValueError(f"Unknown gate {gate!r}; valid gates: {list(names)}.")
  maps = attention_unet.attention_maps(
    model, variables, jnp.asarray(image, jnp.float32)
  )
  if gate == MEAN:
    return jnp.mean(jnp.stack(list(maps.values())), axis=0)
  return maps[gate]
