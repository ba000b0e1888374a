"""Explanation maps of volumes too large for one network call.

The volume is tiled with overlapping windows exactly as for prediction
(`evaluation.inference.sliding_window_predict`: window placement, padding
of short axes, Gaussian blending); each window's map is computed on its
own and the maps are blended. Each window explains the score of the part
of the region that lies inside it (for `region="predicted"`, the class's
predicted voxels in that window), so the blended map is a local
approximation of the whole-volume map: exact for the gradient of a
network whose receptive field fits in the window's centre, approximate
near window borders. A user mask (`region="mask"`) travels with the image
as an extra channel, so each window sees its own crop of it.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from medseg_jax.evaluation import inference

# `(windows f32[N, *W, C], mask f32[N, *W] | None) -> maps f32[N, *W]`.
WindowExplainer = Callable[[jax.Array, jax.Array | None], jax.Array]


def sliding_window_explain(
  explain_fn: WindowExplainer,
  image: jax.typing.ArrayLike,
  *,
  window: int | Sequence[int],
  overlap: float = 0.5,
  sw_batch_size: int = 1,
  mask: jax.typing.ArrayLike | None = None,
  mode: str = "gaussian",
) -> np.ndarray:
  """A map of a whole volume from window-by-window maps.

  Args:
    explain_fn: maps a batch of windows `f32[N, *W, C]` (and, with `mask`,
      the mask's windows `f32[N, *W]`, else None) to `f32[N, *W]`; e.g.
      `make_explainer(...)` with the variables bound.
    image: `f32[*S, C]`, one volume (or image), no batch axis.
    window: window size `W`.
    overlap: fraction shared by neighbouring windows.
    sw_batch_size: windows per call of `explain_fn`.
    mask: `[*S]` region for `region="mask"` targets, cut with the image.
    mode: `"gaussian"` or `"constant"` blending weights.

  Returns:
    `f32[*S]`.
  """
  image = jnp.asarray(image, jnp.float32)
  channels = image.shape[-1]
  if mask is not None:
    mask = jnp.asarray(mask, jnp.float32)
    if mask.shape != image.shape[:-1]:
      raise ValueError(
        f"mask has shape {mask.shape}; expected {image.shape[:-1]}."
      )
    image = jnp.concatenate([image, mask[..., None]], axis=-1)

  def predict(windows):
    if mask is None:
      maps = explain_fn(windows, None)
    else:
      maps = explain_fn(windows[..., :channels], windows[..., channels])
    return maps[..., None]

  out = inference.sliding_window_predict(
    predict,
    image,
    window=window,
    overlap=overlap,
    sw_batch_size=sw_batch_size,
    mode=mode,
  )
  return np.asarray(out)[..., 0]
