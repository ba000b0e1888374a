"""Data augmentation in JAX for 2-D and 3-D segmentation, on device or host.

Examples are channels-last dicts, ``image: f32[*S, C]``, ``label: int[*S]``,
``mask: f32[*S]`` (1 = real voxel, 0 = padding), ``S`` of rank 2 or 3.
Every op is a pure function ``op(key, example, **params) -> example`` with
static shapes, so the same code runs inside a jitted, vmapped train step or
on the host (e.g. in grain workers, on numpy inputs):

  >>> augment = build([
  ...   dict(op="flip", p=0.5),
  ...   dict(op="elastic", p=0.3, magnitude=(0, 8), grid=(6, 6)),
  ...   dict(op="gamma", p=0.5, gamma=(0.7, 1.5)),
  ... ])
  >>> batch = augment(key, batch)                    # [B, *S, C] etc.
  >>> example = augment.augment_example(key, example)

Geometric ops (flip, rot90, affine, elastic) move image, label and mask
with one draw: the image is interpolated linearly, label and mask by
nearest neighbour, and voxels from outside the input become image 0,
label 0, mask 0. Intensity ops (gamma, brightness, contrast, noise, blur,
low_resolution, and ``corruption``: the graded MRI artefacts of
:mod:`medseg_jax.corruptions` at a random severity) change the image on
real voxels only.

``config.augment_on`` runs a config's list inside the jitted train step
(``"device"``) or in the grain input pipeline on the CPU (``"host"``,
:class:`HostAugment`), with the same keys; see
:mod:`medseg_jax.augment.host`.
"""

from medseg_jax.augment.host import AUGMENT_ON
from medseg_jax.augment.host import HostAugment
from medseg_jax.augment.host import check_augment_on
from medseg_jax.augment.host import step_key
from medseg_jax.augment.intensity import blur
from medseg_jax.augment.intensity import brightness
from medseg_jax.augment.intensity import contrast
from medseg_jax.augment.intensity import gamma
from medseg_jax.augment.intensity import low_resolution
from medseg_jax.augment.intensity import noise
from medseg_jax.augment.registry import AUGMENTATIONS
from medseg_jax.augment.registry import Augment
from medseg_jax.augment.registry import OpSpec
from medseg_jax.augment.registry import Param
from medseg_jax.augment.registry import Step
from medseg_jax.augment.registry import build
from medseg_jax.augment.registry import corruption
from medseg_jax.augment.sampling import resample
from medseg_jax.augment.spatial import affine
from medseg_jax.augment.spatial import elastic
from medseg_jax.augment.spatial import flip
from medseg_jax.augment.spatial import rot90

__all__ = [
  "AUGMENTATIONS",
  "AUGMENT_ON",
  "Augment",
  "HostAugment",
  "OpSpec",
  "Param",
  "Step",
  "affine",
  "blur",
  "brightness",
  "build",
  "check_augment_on",
  "contrast",
  "corruption",
  "elastic",
  "flip",
  "gamma",
  "low_resolution",
  "noise",
  "resample",
  "rot90",
  "step_key",
]
