"""Graded image-quality corruptions (MRI artefacts) in JAX, 2-D and 3-D.

Ten corruptions, each at severities 1-5 (0 is the clean image), after
ROOD-MRI (Boone et al. 2023) and TorchIO's artefact transforms:
``gaussian_noise``, ``rician_noise``, ``blur``, ``bias_field``,
``contrast_compression``, ``contrast_expansion`` (gamma), ``ghosting``,
``motion``, ``spike`` (k-space) and ``anisotropy`` (down-sampling along
one axis). The strengths per severity are in ``CORRUPTIONS[name].table``
(``describe()`` prints them all; docs/robustness.md lists them).

  >>> from medseg_jax import corruptions
  >>> noisy = corruptions.corrupt("rician_noise", key, image, 3)  # [*S, C]
  >>> batch = jax.vmap(lambda k, x: corruptions.corrupt("motion", k, x, 2))(
  ...     keys, images)                                  # [B, *S, C]
  >>> corruptions.parameters("motion", 2)
  {'degrees': 2.0, 'translation': 4.0}

Every corruption is a pure, shape-static function of ``(key, image,
severity, mask)`` on ONE channels-last example: jit it (name static), vmap
it, run it on device. The same key gives the same draws at every severity
(only the strength changes), severity 0 returns the input itself, labels
are never touched (``corrupt_example``).

For training, the augmentation op ``corruption`` of :mod:`medseg_jax.augment`
draws one corruption and a severity per example::

  config.augment = [
    dict(op="flip", axis_p=0.5),
    dict(op="corruption", p=0.5, names="all", severity=(0.0, 3.0)),
  ]

For evaluation, ``python -m medseg_jax.evaluate --workdir=RUN
--corruptions=all`` scores a checkpoint under every (corruption, severity);
see :mod:`medseg_jax.corruptions.robustness` and docs/robustness.md.
"""

from medseg_jax.corruptions.registry import CORRUPTIONS
from medseg_jax.corruptions.registry import MAX_SEVERITY
from medseg_jax.corruptions.registry import NAMES
from medseg_jax.corruptions.registry import SEVERITIES
from medseg_jax.corruptions.registry import Corruption
from medseg_jax.corruptions.registry import corrupt
from medseg_jax.corruptions.registry import corrupt_example
from medseg_jax.corruptions.registry import describe
from medseg_jax.corruptions.registry import get
from medseg_jax.corruptions.registry import parameters
from medseg_jax.corruptions.registry import random_corruption
from medseg_jax.corruptions.registry import resolve

__all__ = [
  "CORRUPTIONS",
  "MAX_SEVERITY",
  "NAMES",
  "SEVERITIES",
  "Corruption",
  "corrupt",
  "corrupt_example",
  "describe",
  "get",
  "parameters",
  "random_corruption",
  "resolve",
]
