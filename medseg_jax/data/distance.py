"""Signed distance maps of the labels, computed on the host for the
boundary loss (:func:`medseg_jax.losses.boundary_loss.boundary`).

A distance map depends on the label alone, so it is computed once per
training patch in the grain pipeline with scipy's exact Euclidean distance
transform, never inside the jitted step. It must describe the label the
model is trained on, so :class:`SignedDistanceMaps` runs after everything
that moves the label: after the random crop or pad and after batching, and
after ``config.augment`` when that runs on the host
(``config.augment_on="host"``). Geometric augmentations on the device would
move the label after the map was made, so :func:`check_config` refuses
that combination at start-up; intensity-only augmentations on the device
are fine (they leave the label alone).

Distances are in voxels of the patch; padded voxels (label 0, mask 0)
count as background. The loss ignores masked voxels, but an object
touching the padding gets a border there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np
from scipy import ndimage

from medseg_jax.augment import registry as augment_registry


def signed_distance(label: np.ndarray, num_classes: int) -> np.ndarray:
  """Signed Euclidean distance map of each class, in voxels.

  For class ``c`` with region ``G = (label == c)``:

  * outside ``G``: the distance to the nearest voxel of ``G`` (``>= 1``);
  * inside ``G``: minus (the distance to the nearest voxel outside ``G``,
    less 1), so the voxels on the inner border of ``G`` are 0 and deeper
    ones negative;
  * 0 everywhere if ``G`` is empty or fills the whole array (no border).

  This is the convention of the boundary loss's reference code (Kervadec
  et al., 2019), where voxel ``q`` of the prediction costs ``phi(q)``.

  Args:
    label: ``int[*S]`` class ids (any rank); values outside ``[0, C)``
      belong to no class.
    num_classes: ``C``.

  Returns:
    ``f32[*S, C]``.
  """
  label = np.asarray(label)
  out = np.zeros(label.shape + (num_classes,), np.float32)
  for c in range(num_classes):
    inside = label == c
    if not inside.any() or inside.all():
      continue
    outside_dist = ndimage.distance_transform_edt(~inside)
    inside_dist = ndimage.distance_transform_edt(inside)
    out[..., c] = np.where(inside, 1.0 - inside_dist, outside_dist)
  return out


@dataclasses.dataclass(frozen=True)
class SignedDistanceMaps(grain.transforms.Map):
  """Adds ``distance: f32[B, *S, C]`` (``signed_distance`` of each
  example's label) to a batch with ``label: int[B, *S]``.

  Attributes:
    num_classes: ``C``, the number of classes of the dataset.
  """

  num_classes: int

  def map(self, batch: dict[str, Any]) -> dict[str, Any]:
    labels = np.asarray(batch["label"])
    distance = np.stack(
      [signed_distance(label, self.num_classes) for label in labels]
    )
    return {**batch, "distance": distance}


def check_config(config: Any) -> None:
  """Raises if ``config`` moves labels after the distance maps are made.

  Args:
    config: a training config whose loss needs distance maps.

  Raises:
    ValueError: if ``config.augment`` has a geometric op and
      ``config.augment_on`` is ``"device"``; the message names the ops and
      the fix.
  """
  specs = list(config.get("augment", None) or [])
  if config.get("augment_on", "device") != "device":
    return
  moving = [
    s["op"]
    for s in specs
    if s.get("op") in augment_registry.AUGMENTATIONS
    and augment_registry.AUGMENTATIONS[s["op"]].geometric
  ]
  if moving:
    raise ValueError(
      "The loss needs signed distance maps of the labels (boundary loss), "
      "which the input pipeline computes on the host; the geometric "
      f"augmentations {moving} of config.augment would then move the labels "
      "on the device without their maps. Set config.augment_on='host' (the "
      "maps are computed after the host augmentation), or drop those ops."
    )
