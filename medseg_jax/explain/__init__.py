"""Explanation maps for segmentation models, 2-D and 3-D, jitted, batched.

Every method is a pure function of `(model, variables, image, target,
**options)` for a Flax segmentation model (`f32[B, *S, C] -> f32[B, *S,
K]` logits, as `models.from_config` builds them) and a `Target` (a class
plus a region: see `targets`):

  method                 returns            options
  saliency               f32[B, *S, C]      magnitude
  smoothgrad             f32[B, *S, C]      noise_level, samples, magnitude,
                                            batch_size, rng
  integrated_gradients   f32[B, *S, C]      baseline, steps, rule,
                                            batch_size
  gradcam, gradcam_pp    f32[B, *S]         layer (`cam.layer_names`)
  occlusion              f32[B, *S]         window, stride, fill, batch_size
  attention              f32[B, *S]         gate (Attention U-Net only)

`explain(method, ...)` dispatches by name and always returns a map
`f32[B, *S]` (channel attributions go through `heatmap`);
`make_explainer(model, method, target, **options)` returns that as one
jitted `(variables, image[, mask]) -> f32[B, *S]`; `sliding_window_explain`
computes maps of large volumes window by window; `render` draws heat-map
overlays. `python -m medseg_jax.explain` runs them on a trained run.

  >>> target = Target(class_index=1)            # predicted mask of class 1
  >>> sal = saliency(model, variables, image, target)       # [B, H, W, C]
  >>> cam = gradcam(model, variables, image, target, layer="up_1")
  >>> fn = make_explainer(model, "occlusion", target, window=32)
  >>> occ = fn(variables, image)                             # [B, H, W]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax.explain.attention import attention
from medseg_jax.explain.attention import gate_names
from medseg_jax.explain.cam import gradcam
from medseg_jax.explain.cam import gradcam_pp
from medseg_jax.explain.cam import layer_names
from medseg_jax.explain.gradients import heatmap
from medseg_jax.explain.gradients import integrated_gradients
from medseg_jax.explain.gradients import saliency
from medseg_jax.explain.gradients import smoothgrad
from medseg_jax.explain.occlusion import occlusion
from medseg_jax.explain.targets import REGIONS
from medseg_jax.explain.targets import Target
from medseg_jax.explain.targets import class_index
from medseg_jax.explain.targets import score_of
from medseg_jax.explain.windowed import sliding_window_explain

# Name -> method; the names are what `--method` and `explain` accept.
METHODS: dict[str, Callable[..., jax.Array]] = {
  "saliency": saliency,
  "smoothgrad": smoothgrad,
  "integrated_gradients": integrated_gradients,
  "gradcam": gradcam,
  "gradcam_pp": gradcam_pp,
  "occlusion": occlusion,
  "attention": attention,
}
# Methods returning one attribution per input channel.
INPUT_ATTRIBUTIONS = ("saliency", "smoothgrad", "integrated_gradients")


def get_method(name: str) -> Callable[..., jax.Array]:
  """The method registered as `name`.

  Raises:
    ValueError: for an unknown name; the message lists the valid ones.
  """
  try:
    return METHODS[name]
  except KeyError:
    raise ValueError(
      f"Unknown explanation method {name!r}; valid methods: {list(METHODS)}."
    ) from None


def method_options(name: str) -> tuple[str, ...]:
  """The keyword options of method `name`."""
  signature = inspect.signature(get_method(name))
  return tuple(
    p.name
    for p in signature.parameters.values()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
  )


def check_options(name: str, options: dict[str, Any]) -> None:
  """Raises a ValueError naming the valid options if one is unknown."""
  valid = method_options(name)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(
      f"Unknown option(s) {unknown} for method {name!r}; valid options: "
      f"{list(valid)}."
    )


def explain(
  method: str,
  model: nn.Module,
  variables: Any,
  image: jax.typing.ArrayLike,
  target: Target | None = None,
  **options,
) -> jax.Array:
  """The map `f32[B, *S]` of `method` (a name of `METHODS`).

  Channel attributions (`INPUT_ATTRIBUTIONS`) are reduced with `heatmap`.
  Traceable: wrap in `jax.jit` with the model, method and options static,
  or use `make_explainer`.
  """
  fn = get_method(method)
  check_options(method, options)
  target = Target() if target is None else target
  out = fn(model, variables, image, target, **options)
  if method in INPUT_ATTRIBUTIONS:
    out = heatmap(out)
  return out


def make_explainer(
  model: nn.Module,
  method: str,
  target: Target | None = None,
  **options,
) -> Callable[..., jax.Array]:
  """One jitted `(variables, image, mask=None) -> f32[B, *S]` for `method`.

  `target`'s class, region and voxel are fixed; a `mask` passed at call
  time (`bool[B, *S]` or `bool[*S]`) replaces the target's mask (for
  `region="mask"`). Unknown method, option, layer or gate names raise a
  ValueError listing the valid ones (layers and gates when first called).
  """
  get_method(method)
  check_options(method, options)
  target = Target() if target is None else target

  @jax.jit
  def run(variables, image, mask=None):
    chosen = target
    if mask is not None:
      chosen = target.replace(mask=jnp.asarray(mask))
    return explain(method, model, variables, image, chosen, **options)

  return run


__all__ = [
  "INPUT_ATTRIBUTIONS",
  "METHODS",
  "REGIONS",
  "Target",
  "attention",
  "check_options",
  "class_index",
  "explain",
  "gate_names",
  "get_method",
  "gradcam",
  "gradcam_pp",
  "heatmap",
  "integrated_gradients",
  "layer_names",
  "make_explainer",
  "method_options",
  "occlusion",
  "saliency",
  "score_of",
  "sliding_window_explain",
  "smoothgrad",
]
