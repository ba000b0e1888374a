"""What a segmentation explanation explains: a class and a region.

A classifier's explanation asks "why this class?". For a segmentation the
question is "why this class *here*?", so the score explained is the class
logit summed over a region of interest (Seg-Grad-CAM, Vinogradova et al.
2020; Captum's segmentation tutorial):

  S(x) = sum_{v in R} logits(x)[v, c]

`Target(class_index, region=...)` names `c` and how `R` is chosen:

* `"predicted"` (default): the voxels the model labels `c` on the image
  being explained (argmax of the logits);
* `"largest_component"`: the largest connected component of those voxels
  (face connectivity), e.g. one lesion of several;
* `"mask"`: a user mask, `Target(..., mask=bool[B, *S] or bool[*S])`;
* `"voxel"`: one voxel, `Target(..., voxel=(y, x))` or `(z, y, x)`;
* `"all"`: every voxel (what MONAI's classification-style CAMs score).

The region is fixed once from the unperturbed image and held constant
(`jax.lax.stop_gradient`) while the image is perturbed, so noisy copies
(SmoothGrad), path points (Integrated Gradients) and occluded copies are
all scored over the same voxels. Everything here is jittable and works per
example on a batch, in 2-D and 3-D.

References:

* K. Vinogradova, A. Dibrov, G. Myers. "Towards Interpretable Semantic
  Segmentation via Gradient-weighted Class Activation Mapping". AAAI 2020
  student abstract. https://arxiv.org/abs/2002.11434
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

REGIONS = ("predicted", "largest_component", "mask", "voxel", "all")


@struct.dataclass
class Target:
  """A class and a region of interest (see the module docstring).

  A pytree: `mask` is data (traced under `jax.jit`), the other fields are
  static.

  Attributes:
    class_index: the class `c` whose logit is explained.
    region: one of `REGIONS`.
    voxel: spatial index `(y, x)` or `(z, y, x)` for `region="voxel"`.
    mask: `bool[B, *S]` or `bool[*S]` (any dtype; nonzero is inside) for
      `region="mask"`.
  """

  class_index: int = struct.field(pytree_node=False, default=1)
  region: str = struct.field(pytree_node=False, default="predicted")
  voxel: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
  mask: jax.Array | None = None

  def __post_init__(self):
    if self.region not in REGIONS:
      raise ValueError(
        f"Unknown region {self.region!r}; valid regions: {REGIONS}."
      )
    if self.region == "voxel" and self.voxel is None:
      raise ValueError("region='voxel' needs voxel=(y, x) or (z, y, x).")
    if self.region == "mask" and self.mask is None:
      raise ValueError("region='mask' needs mask=bool[B, *S] or bool[*S].")


def class_index(class_names: Sequence[str], name: str | int) -> int:
  """The index of class `name` (a name or an index, as int or string).

  Raises:
    ValueError: for an unknown name or an index out of range; the message
      lists the valid names.
  """
  names = tuple(class_names)
  if isinstance(name, str) and name in names:
    return names.index(name)
  try:
    index = int(name)
  except (TypeError, ValueError):
    index = -1
  if 0 <= index < len(names):
    return index
  valid = ", ".join(f"{i}={n}" for i, n in enumerate(names))
  raise ValueError(f"Unknown class {name!r}; valid classes: {valid}.")


def check_class(target: Target, num_classes: int) -> None:
  """Raises a ValueError if the target's class is not a model output."""
  if not 0 <= target.class_index < num_classes:
    raise ValueError(
      f"Target class {target.class_index} out of range; the model has "
      f"{num_classes} classes (valid: 0..{num_classes - 1})."
    )


def largest_component(mask: jax.typing.ArrayLike) -> jax.Array:
  """The largest face-connected component of a binary mask, per example.

  Jittable: every foreground voxel starts with its own id (flat index + 1)
  and repeatedly takes the largest id among itself and its foreground face
  neighbours until nothing changes; then each component holds one id, the
  ids are counted and the most frequent kept (ties: the largest id). The
  number of sweeps is the longest path inside a component.

  Args:
    mask: `bool[B, *S]` (2 or 3 spatial axes; any dtype, nonzero inside).

  Returns:
    `bool[B, *S]`: the largest component of each example (all False where
    an example's mask is empty).
  """
  mask = jnp.asarray(mask) != 0
  spatial = mask.shape[1:]
  size = 1
  for s in spatial:
    size *= s

  def one(m):
    ids = jnp.where(m, jnp.arange(1, size + 1).reshape(spatial), 0)

    def sweep(ids):
      best = ids
      for axis in range(len(spatial)):
        for shift in (1, -1):
          moved = jnp.roll(ids, shift, axis)
          # Undo the wrap-around: the rolled-in border row has no neighbour.
          edge = 0 if shift == 1 else spatial[axis] - 1
          index = [slice(None)] * len(spatial)
          index[axis] = edge
          moved = moved.at[tuple(index)].set(0)
          best = jnp.maximum(best, moved)
      return jnp.where(m, best, 0)

    def cond(carry):
      ids, previous = carry
      return jnp.any(ids != previous)

    def body(carry):
      ids, _ = carry
      return sweep(ids), ids

    ids, _ = jax.lax.while_loop(cond, body, (sweep(ids), ids))
    counts = jnp.zeros(size + 1, jnp.int32).at[ids.ravel()].add(1)
    counts = counts.at[0].set(0)
    keep = jnp.argmax(counts[::-1])  # Ties: the largest id.
    keep = size - keep
    return (ids == keep) & m

  return jax.vmap(one)(mask)


def region_mask(logits: jax.typing.ArrayLike, target: Target) -> jax.Array:
  """The region of interest as `f32[B, *S]` (1 inside, 0 outside).

  Args:
    logits: `f32[B, *S, K]`, the model's output on the image explained.
    target: the class and region.

  Returns:
    `f32[B, *S]`, without gradient (`stop_gradient`).
  """
  logits = jnp.asarray(logits)
  check_class(target, logits.shape[-1])
  shape = logits.shape[:-1]
  spatial = shape[1:]
  if target.region in ("predicted", "largest_component"):
    region = jnp.argmax(logits, axis=-1) == target.class_index
    if target.region == "largest_component":
      region = largest_component(region)
  elif target.region == "mask":
    region = jnp.asarray(target.mask) != 0
    if region.shape == spatial:
      region = jnp.broadcast_to(region, shape)
    if region.shape != shape:
      raise ValueError(
        f"Target mask has shape {region.shape}; expected {shape} or "
        f"{spatial} (the image's batch and spatial shape)."
      )
  elif target.region == "voxel":
    voxel = tuple(int(v) for v in target.voxel)
    if len(voxel) != len(spatial) or not all(
      0 <= v < s for v, s in zip(voxel, spatial, strict=False)
    ):
      raise ValueError(
        f"Target voxel {voxel} is not inside the spatial shape {spatial}."
      )
    region = jnp.zeros(shape, bool).at[(slice(None), *voxel)].set(True)
  else:  # "all"
    region = jnp.ones(shape, bool)
  return jax.lax.stop_gradient(region.astype(jnp.float32))


def score(
  logits: jax.typing.ArrayLike, region: jax.typing.ArrayLike, target: Target
) -> jax.Array:
  """`S = sum_v region[v] * logits[v, c]`, per example: `f32[B]`."""
  logits = jnp.asarray(logits)
  region = jnp.asarray(region)
  chosen = logits[..., target.class_index] * region
  return chosen.reshape(chosen.shape[0], -1).sum(axis=1)


def forward(
  model: nn.Module, variables: Any, image: jax.typing.ArrayLike
) -> jax.Array:
  """The model's logits in evaluation mode, `f32[B, *S, K]`.

  Only `params` and `batch_stats` of `variables` are passed on (collections
  the model sows into must not be fed back in).
  """
  variables = {
    k: v for k, v in variables.items() if k in ("params", "batch_stats")
  }
  return model.apply(variables, image, train=False).astype(jnp.float32)


def region_of(
  model: nn.Module, variables: Any, image: jax.typing.ArrayLike, target: Target
) -> jax.Array:
  """The target's region on `image`: `f32[B, *S]` (see `region_mask`)."""
  return region_mask(forward(model, variables, image), target)


def score_of(
  model: nn.Module,
  variables: Any,
  image: jax.typing.ArrayLike,
  target: Target,
  region: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """The explained score `f32[B]` of `image`.

  Args:
    model, variables: the network.
    image: `f32[B, *S, C]`.
    target: class and region.
    region: `f32[B, *S]` to score over; default the target's region on
      `image` itself. Pass the region of another image to score a
      perturbed copy over the same voxels (e.g. an Integrated Gradients
      baseline).
  """
  logits = forward(model, variables, image)
  if region is None:
    region = region_mask(logits, target)
  return score(logits, region, target)
