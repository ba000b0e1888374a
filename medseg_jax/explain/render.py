"""Heat-map overlays of explanation maps, as PNG.

The image (first channel, 1st-99th percentile window, grey) with the map on
top in a perceptual colour map (matplotlib's `inferno`), its opacity
growing with the map's value so low values leave the image visible. Maps
are scaled to [0, 1] by their largest absolute value (signed maps by
`|map|`), never inverted. Volumes show a few axial slices (axis 0 of
`[D, H, W]`) side by side, chosen where the map is strongest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

from medseg_jax.evaluation import overlays


def normalise(heat: np.ndarray) -> np.ndarray:
  """`|heat| / max |heat|` in [0, 1] (zeros stay zeros)."""
  heat = np.abs(np.asarray(heat, np.float64))
  top = heat.max() if heat.size else 0.0
  return (heat / top if top > 0 else heat).astype(np.float32)


def colour(heat: np.ndarray, cmap: str = "inferno") -> np.ndarray:
  """`f[H, W]` in [0, 1] -> `u8[H, W, 3]` through a matplotlib colour map."""
  import matplotlib  # noqa: PLC0415

  rgba = matplotlib.colormaps[cmap](np.clip(heat, 0, 1))
  return (rgba[..., :3] * 255).astype(np.uint8)


def overlay_2d(
  image: np.ndarray,
  heat: np.ndarray,
  *,
  alpha: float = 0.6,
  cmap: str = "inferno",
  contour: np.ndarray | None = None,
) -> np.ndarray:
  """`f32[H, W, C]` image and `f32[H, W]` map -> `u8[H, W, 3]`.

  `heat` is expected in [0, 1] (see `normalise`); `contour` (`bool[H, W]`)
  outlines the explained region in cyan.
  """
  gray = overlays._to_gray(np.asarray(image, np.float32))  # noqa: SLF001
  heat = np.clip(np.asarray(heat, np.float32), 0, 1)
  weight = (alpha * np.sqrt(heat))[..., None]
  out = (1 - weight) * gray + weight * colour(heat, cmap)
  if contour is not None:
    region = np.asarray(contour, bool)
    inner = region.copy()
    for axis in (0, 1):
      for shift in (1, -1):
        inner &= np.roll(region, shift, axis)
    out[region & ~inner] = (0, 255, 255)
  return out.astype(np.uint8)


def pick_slices(heat: np.ndarray, count: int = 3) -> list[int]:
  """`count` axial slices of `heat: f[D, H, W]`: the strongest slice and
  slices spread over the range where the map is nonzero."""
  per_slice = np.abs(heat).reshape(heat.shape[0], -1).sum(axis=1)
  if not per_slice.any():
    return sorted(
      {int(i) for i in np.linspace(0, heat.shape[0] - 1, count).round()}
    )
  strongest = int(np.argmax(per_slice))
  nonzero = np.nonzero(per_slice > 0.05 * per_slice.max())[0]
  spread = np.linspace(nonzero[0], nonzero[-1], count + 2)[1:-1].round()
  chosen = {strongest, *(int(i) for i in spread)}
  return (
    sorted(chosen)[: max(count, 1)] if len(chosen) > count else sorted(chosen)
  )


def render(
  image: np.ndarray,
  heat: np.ndarray,
  *,
  title: str = "",
  region: np.ndarray | None = None,
  slices: Sequence[int] | None = None,
  scale: int = 1,
) -> Image.Image:
  """An overlay panel (2-D) or a row of slice panels (3-D).

  Args:
    image: `f32[*S, C]`, `S` 2-D or 3-D.
    heat: `f32[*S]`, any scale (normalised here over the whole map).
    title: text drawn above.
    region: `bool[*S]` explained region, outlined.
    slices: axial slices for 3-D (default `pick_slices`).
    scale: integer upscaling (nearest) for small inputs.
  """
  image = np.asarray(image, np.float32)
  heat = normalise(heat)
  if heat.ndim == 2:
    panels = [overlay_2d(image, heat, contour=region)]
    labels = [""]
  else:
    slices = list(slices) if slices is not None else pick_slices(heat)
    panels = [
      overlay_2d(
        image[i], heat[i], contour=None if region is None else region[i]
      )
      for i in slices
    ]
    labels = [f"z={i}" for i in slices]
  gap = 4
  height, width = panels[0].shape[:2]
  height, width = height * scale, width * scale
  top = 16 if title or any(labels) else 0
  canvas = Image.new(
    "RGB", (len(panels) * (width + gap) - gap, height + top), "white"
  )
  draw = ImageDraw.Draw(canvas)
  for k, (panel, label) in enumerate(zip(panels, labels, strict=True)):
    picture = Image.fromarray(panel)
    if scale != 1:
      picture = picture.resize((width, height), Image.NEAREST)
    x = k * (width + gap)
    canvas.paste(picture, (x, top))
    if label:
      draw.text((x + 2, 2 if not title else 2), label, fill="black")
  if title:
    draw.text((2, 2), title, fill="black")
  return canvas
