"""Per-example grain transforms run on the host, in the input workers.

An example is a dict with ``image: f32[*S, C]``, ``label: u8[*S]`` and
optionally ``mask: f32[*S]`` (1 where the voxel is real data, 0 where it is
padding), where ``S`` is ``(H, W)`` or ``(D, H, W)``. Crop and pad move
image, label and mask together from a single random draw.

Only what must happen before batching lives here: intensity normalisation
(also used by evaluation and prediction), the random crop or pad to the
patch size and the evaluation padding. A config lists them as
``config.data.train_transforms = [dict(op="name", **kwargs), ...]``, built
by :func:`build`. Every augmentation (flips, rotations, elastic, intensity)
is an op of :mod:`medseg_jax.augment`, listed in ``config.augment``. Classes
live at module level so grain can pickle them into worker processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from medseg_jax.augment import registry as augment_registry

Example = dict[str, Any]

NORMALIZE_MODES = ("zscore", "minmax", "fixed", "none")


@dataclasses.dataclass(frozen=True)
class Normalize(grain.transforms.Map):
  """Per-example, per-channel intensity normalisation.

  ``zscore``: ``(x - mean) / std`` over the example's voxels (optionally only
  voxels where ``x > 0`` in any channel, as for skull-stripped MRI);
  ``minmax``: rescale to ``[0, 1]``; ``fixed``: dataset-wide constants per
  channel, ``(clip(x, low, high) - mean) / std`` (nnU-Net's CT scheme; a
  ``None`` bound does not clip); ``none``: unchanged.
  """

  mode: str = "zscore"
  nonzero: bool = False
  eps: float = 1e-6
  # mode="fixed": one entry per channel.
  low: tuple[float | None, ...] = ()
  high: tuple[float | None, ...] = ()
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()

  def __post_init__(self):
    if self.mode not in NORMALIZE_MODES:
      raise ValueError(
        f"Unknown normalize mode {self.mode!r}; valid: {NORMALIZE_MODES}."
      )
    if self.mode == "fixed":
      sizes = {len(self.low), len(self.high), len(self.mean), len(self.std)}
      if len(sizes) != 1 or not self.mean:
        raise ValueError(
          "normalize mode 'fixed' needs low, high, mean and std with one "
          f"entry per channel each; got low={self.low}, high={self.high}, "
          f"mean={self.mean}, std={self.std}."
        )
      if any(s is None or s <= 0 for s in self.std):
        raise ValueError(f"normalize std must be positive; got {self.std}.")

  def map(self, example: Example) -> Example:
    image = np.asarray(example["image"], np.float32)
    if self.mode == "none":
      return {**example, "image": image}
    if self.mode == "fixed":
      return {**example, "image": self._fixed(image)}
    spatial_axes = tuple(range(image.ndim - 1))
    if self.nonzero:
      select = np.any(image > 0, axis=-1)
      if not select.any():
        select = np.ones_like(select)
      values = image[select]  # [N, C]
      axes = (0,)
    else:
      values, axes = image, spatial_axes
    if self.mode == "zscore":
      mean = values.mean(axis=axes)
      std = values.std(axis=axes)
      image = (image - mean) / np.maximum(std, self.eps)
    else:
      low, high = values.min(axis=axes), values.max(axis=axes)
      image = (image - low) / np.maximum(high - low, self.eps)
    return {**example, "image": image.astype(np.float32)}

  def _fixed(self, image: np.ndarray) -> np.ndarray:
    if image.shape[-1] != len(self.mean):
      raise ValueError(
        f"normalize mode 'fixed' has statistics for {len(self.mean)} "
        f"channel(s); the image has {image.shape[-1]}."
      )
    low = np.array([-np.inf if v is None else v for v in self.low], np.float32)
    high = np.array([np.inf if v is None else v for v in self.high], np.float32)
    image = np.clip(image, low, high)
    mean = np.asarray(self.mean, np.float32)
    return ((image - mean) / np.asarray(self.std, np.float32)).astype(
      np.float32
    )


def _pad_to(
  example: Example, size: Sequence[int], offsets: Sequence[int] | None
) -> Example:
  """Pads the spatial axes up to ``size``; the mask marks padded voxels 0."""
  label = example["label"]
  shape = label.shape
  pads = []
  for axis, (have, want) in enumerate(zip(shape, size, strict=True)):
    extra = max(want - have, 0)
    before = extra // 2 if offsets is None else offsets[axis] if extra else 0
    pads.append((before, extra - before))
  if not any(p for pair in pads for p in pair):
    return example
  image = np.pad(example["image"], pads + [(0, 0)])
  return {
    **example,
    "image": image,
    "label": np.pad(label, pads),
    "mask": np.pad(example["mask"], pads),
  }


def _with_mask(example: Example) -> Example:
  if "mask" in example:
    return example
  return {**example, "mask": np.ones(example["label"].shape, np.float32)}


@dataclasses.dataclass(frozen=True)
class RandomCropOrPad(grain.transforms.RandomMap):
  """Random spatial crop to ``size``, zero padding axes that are smaller.

  With probability ``foreground_share`` the patch is centred on a voxel of a
  foreground class (a class drawn uniformly among those present, then a
  voxel of it drawn uniformly), as nnU-Net oversamples foreground so that
  small structures are seen often enough; otherwise, and when the example
  has no foreground, the position is drawn uniformly. Padding puts the image
  at a random offset inside the patch; padded voxels get ``mask = 0`` so
  losses ignore them.
  """

  size: tuple[int, ...] = ()
  foreground_share: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.foreground_share <= 1.0:
      raise ValueError(
        f"foreground_share must be in [0, 1]; got {self.foreground_share}."
      )

  def random_map(self, example: Example, rng: np.random.Generator) -> Example:
    example = _with_mask(example)
    shape = example["label"].shape
    if len(self.size) != len(shape):
      raise ValueError(
        f"Patch size {tuple(self.size)} has {len(self.size)} axes but the "
        f"label has shape {shape} (case {example.get('case_id')!r})."
      )
    offsets = [
      int(rng.integers(0, max(w - h, 0) + 1))
      for h, w in zip(shape, self.size, strict=True)
    ]
    example = _pad_to(example, self.size, offsets)
    shape = example["label"].shape
    starts = None
    if self.foreground_share and rng.random() < self.foreground_share:
      centre = _foreground_voxel(example["label"], rng)
      if centre is not None:
        starts = [
          int(np.clip(c - w // 2, 0, h - w))
          for c, h, w in zip(centre, shape, self.size, strict=True)
        ]
    if starts is None:
      starts = [
        int(rng.integers(0, h - w + 1))
        for h, w in zip(shape, self.size, strict=True)
      ]
    window = tuple(
      slice(s, s + w) for s, w in zip(starts, self.size, strict=True)
    )
    return {
      **example,
      "image": example["image"][window],
      "label": example["label"][window],
      "mask": example["mask"][window],
    }


def _foreground_voxel(
  label: np.ndarray, rng: np.random.Generator
) -> tuple[int, ...] | None:
  """A random voxel of a random foreground class present, or None."""
  classes = np.unique(label)
  classes = classes[classes > 0]
  if not classes.size:
    return None
  chosen = classes[int(rng.integers(0, classes.size))]
  flat = np.flatnonzero(label.reshape(-1) == chosen)
  index = flat[int(rng.integers(0, flat.size))]
  return tuple(int(i) for i in np.unravel_index(index, label.shape))


@dataclasses.dataclass(frozen=True)
class CenterPad(grain.transforms.Map):
  """Pads spatial axes to a multiple of ``multiple`` (for whole-image eval)."""

  multiple: int = 1

  def map(self, example: Example) -> Example:
    example = _with_mask(example)
    shape = example["label"].shape
    size = [-(-s // self.multiple) * self.multiple for s in shape]
    return _pad_to(example, size, None)


@dataclasses.dataclass(frozen=True)
class ToModelInputs(grain.transforms.Map):
  """Keeps the arrays the train step needs, with fixed dtypes.

  Output: ``image: f32[*S, C]``, ``label: i32[*S]``, ``mask: f32[*S]``.
  """

  def map(self, example: Example) -> Example:
    example = _with_mask(example)
    return {
      "image": np.asarray(example["image"], np.float32),
      "label": np.asarray(example["label"], np.int32),
      "mask": np.asarray(example["mask"], np.float32),
    }


TRANSFORMS = {
  "normalize": Normalize,
  "random_crop_or_pad": RandomCropOrPad,
  "center_pad": CenterPad,
}


def _unknown_op(op: Any) -> str:
  """The error message for an op that is not in :data:`TRANSFORMS`."""
  where = f"config.data.train_transforms: op {op!r}"
  valid = f"Valid train_transforms ops: {sorted(TRANSFORMS)}"
  augmentations = sorted(augment_registry.AUGMENTATIONS)
  if op in augment_registry.REMOVED_OPS:
    return (
      f"{where} was removed; its replacement, in config.augment, is "
      f"{augment_registry.REMOVED_OPS[op]}. {valid}."
    )
  if op in augment_registry.AUGMENTATIONS:
    return (
      f"{where} is an augmentation: list it in config.augment (see "
      f"medseg_jax/augment), not here. {valid}."
    )
  return (
    f"{where} is unknown. {valid}; augmentations go in config.augment: "
    f"{augmentations}."
  )


def build(specs: Sequence[dict[str, Any]]) -> list[grain.transforms.Map]:
  """Turns ``[dict(op="normalize", mode="zscore"), ...]`` into transforms.

  Raises:
    ValueError: for an op not in :data:`TRANSFORMS`; the message lists the
      valid ops and, for an augmentation or a removed name (e.g.
      ``random_flip``), says what to list in ``config.augment`` instead.
  """
  out = []
  for spec in specs:
    spec = dict(spec)
    op = spec.pop("op", None)
    if op not in TRANSFORMS:
      raise ValueError(_unknown_op(op))
    for key in ("size", "low", "high", "mean", "std"):
      if key in spec:
        spec[key] = tuple(spec[key])
    out.append(TRANSFORMS[op](**spec))
  return out
