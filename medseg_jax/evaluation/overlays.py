"""Qualitative overlays: image | ground truth | prediction, as PNG panels.

For volumes the axial slice (axis 0 of ``[D, H, W]``) with the most ground
truth foreground is shown. Colours are fixed per class so panels from
different runs compare at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from etils import epath
from PIL import Image
from PIL import ImageDraw

# Class 0 (background) is transparent; then red, green, blue, yellow, ...
PALETTE = np.array(
  [
    [0, 0, 0],
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [255, 225, 25],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
  ],
  np.uint8,
)


def pick_slice(label: np.ndarray) -> int:
  """Index along axis 0 of ``label: int[D, H, W]`` with most foreground."""
  per_slice = (label > 0).reshape(label.shape[0], -1).sum(axis=1)
  return int(np.argmax(per_slice)) if per_slice.any() else label.shape[0] // 2


def _to_gray(image: np.ndarray) -> np.ndarray:
  """``f32[H, W, C]`` (first channel shown) -> ``u8[H, W, 3]``, robust
  1st-99th percentile window."""
  channel = np.asarray(image[..., 0], np.float64)
  low, high = np.percentile(channel, [1, 99])
  scaled = np.clip((channel - low) / max(high - low, 1e-8), 0, 1)
  gray = (scaled * 255).astype(np.uint8)
  return np.repeat(gray[..., None], 3, axis=-1)


def blend(
  gray: np.ndarray, label: np.ndarray, alpha: float = 0.45
) -> np.ndarray:
  """Colours ``gray: u8[H, W, 3]`` where ``label: int[H, W] > 0``."""
  colours = PALETTE[np.asarray(label) % len(PALETTE)].astype(np.float32)
  out = gray.astype(np.float32)
  where = (np.asarray(label) > 0)[..., None]
  out = np.where(where, (1 - alpha) * out + alpha * colours, out)
  return out.astype(np.uint8)


def render(
  image: np.ndarray,
  label: np.ndarray,
  prediction: np.ndarray,
  *,
  title: str = "",
  scale: int = 1,
) -> Image.Image:
  """Three panels side by side for one case.

  Args:
    image: ``f32[*S, C]`` with ``S`` 2-D or 3-D.
    label: ``int[*S]`` ground truth.
    prediction: ``int[*S]`` predicted labels.
    title: text drawn above the panels (case id, Dice).
    scale: integer upscaling for small images.
  """
  if label.ndim == 3:
    index = pick_slice(label)
    image, label, prediction = image[index], label[index], prediction[index]
  gray = _to_gray(image)
  panels = [gray, blend(gray, label), blend(gray, prediction)]
  strip = np.concatenate(
    [np.pad(p, ((0, 0), (0, 4), (0, 0)), constant_values=255) for p in panels],
    axis=1,
  )
  picture = Image.fromarray(strip)
  if scale > 1:
    picture = picture.resize(
      (picture.width * scale, picture.height * scale), Image.NEAREST
    )
  header = 14
  canvas = Image.new("RGB", (picture.width, picture.height + header), "white")
  canvas.paste(picture, (0, header))
  ImageDraw.Draw(canvas).text(
    (2, 1), title or "image | ground truth | prediction", fill=(0, 0, 0)
  )
  return canvas


def write_overlays(
  cases: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]],
  directory: str | epath.Path,
) -> list[epath.Path]:
  """Writes ``<case_id>.png`` for ``(case_id, image, label, pred, dice)``."""
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  paths = []
  for case_id, image, label, prediction, dice in cases:
    size = max(label.shape[-2:])
    scale = max(1, 256 // max(size, 1))
    picture = render(
      image,
      label,
      prediction,
      title=f"{case_id}  Dice(fg)={dice:.3f}  image | truth | prediction",
      scale=scale,
    )
    path = directory / f"{case_id}.png"
    with path.open("wb") as f:
      picture.save(f, format="PNG")
    paths.append(path)
  return paths
