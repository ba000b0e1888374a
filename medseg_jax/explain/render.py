"""Heat-map overlays of explanation maps, as PNG.

The image (first channel, 1st-99th percentile window, grey) with the map on
top in a perceptual colour map (matplotlib's `inferno`), its opacity
growing with the map's value so low values leave the image visible, beside
a panel of the image with the explained region tinted. Maps are scaled to
[0, 1] by the 99.5th percentile of `|map|` (gradient maps are spiky: a few
voxels would otherwise set the scale) and clipped, never inverted. Volumes
show a few axial slices (axis 0 of `[D, H, W]`), chosen where the map is
strongest, one row of panel pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

from medseg_jax.evaluation import overlays


def normalise(heat: np.ndarray, percentile: float = 99.5) -> np.ndarray:
  """`|heat|` divided by its `percentile`-th percentile, clipped to [0, 1]
  (zeros stay zeros; the maximum if the percentile is 0)."""
  heat = np.abs(np.asarray(heat, np.float64))
  if not heat.size:
    return heat.astype(np.float32)
  top = np.percentile(heat, percentile)
  top = top if top > 0 else heat.max()
  if top <= 0:
    return heat.astype(np.float32)
  return np.clip(heat / top, 0, 1).astype(np.float32)


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
) -> np.ndarray:
  """`f32[H, W, C]` image and `f32[H, W]` map in [0, 1] (see `normalise`)
  -> `u8[H, W, 3]`."""
  gray = overlays._to_gray(np.asarray(image, np.float32))  # noqa: SLF001
  heat = np.clip(np.asarray(heat, np.float32), 0, 1)
  weight = (alpha * np.sqrt(heat))[..., None]
  out = (1 - weight) * gray + weight * colour(heat, cmap)
  return out.astype(np.uint8)


def region_panel(image: np.ndarray, region: np.ndarray) -> np.ndarray:
  """The image with `region: bool[H, W]` tinted cyan, `u8[H, W, 3]`."""
  gray = overlays._to_gray(np.asarray(image, np.float32))  # noqa: SLF001
  tint = np.array([0, 200, 255], np.float32)
  where = np.asarray(region, bool)[..., None]
  out = np.where(where, 0.55 * gray + 0.45 * tint, gray)
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
    region: `bool[*S]` explained region, shown in its own panel.
    slices: axial slices for 3-D (default `pick_slices`).
    scale: integer upscaling (nearest) for small inputs.
  """
  image = np.asarray(image, np.float32)
  heat = normalise(heat)
  if heat.ndim == 2:
    image, heat = image[None], heat[None]
    region = None if region is None else np.asarray(region)[None]
    slices, names = [0], [""]
  else:
    slices = list(slices) if slices is not None else pick_slices(heat)
    names = [f"z={i} " for i in slices]
  panels, labels = [], []
  for i, name in zip(slices, names, strict=True):
    if region is not None:
      panels.append(region_panel(image[i], region[i]))
      labels.append(f"{name}region")
    panels.append(overlay_2d(image[i], heat[i]))
    labels.append(f"{name}map")
  gap = 4
  height, width = panels[0].shape[:2]
  height, width = height * scale, width * scale
  top = 30 if title else 16
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
    draw.text((x + 2, top - 14), label, fill="black")
  if title:
    draw.text((2, 2), title, fill="black")
  return canvas
