"""The corruption registry: names, severity tables and the one entry point.

Each corruption has a table of its strengths at severities 0-5 (severity 0
is the identity). A severity between two integers interpolates the table
linearly, so a random augmentation can draw any severity in a range; the
evaluation uses the integers 1-5. Where ROOD-MRI (Boone et al. 2023,
NeuroImage 278:120289, its ``roodmri/transforms/defaults.py``) grades a
corruption, its five levels are used as they are; distances it gives in mm
are voxels here (a per-example function does not know the spacing).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from medseg_jax.corruptions import ops

MAX_SEVERITY = 5
SEVERITIES = (1, 2, 3, 4, 5)


@dataclasses.dataclass(frozen=True)
class Corruption:
  """One registered corruption.

  Attributes:
    fn: ``fn(key, image, real, **strengths) -> image``
      (see :mod:`medseg_jax.corruptions.ops`).
    table: strength name -> its value at severities 0, 1, ..., 5.
    doc: what it simulates, one line.
    source: where the severity scale comes from.
  """

  fn: Callable[..., jax.Array]
  table: Mapping[str, tuple[float, ...]]
  doc: str
  source: str


def _levels(*values: float) -> tuple[float, ...]:
  assert len(values) == MAX_SEVERITY + 1, values
  return tuple(float(v) for v in values)


_ROOD_NOISE = _levels(0.0, 0.16, 0.32, 0.48, 0.64, 0.8)

CORRUPTIONS: dict[str, Corruption] = {
  "gaussian_noise": Corruption(
    ops.gaussian_noise,
    {"sigma": _ROOD_NOISE},
    "additive Gaussian noise, std sigma x the image's std",
    "ROOD-MRI's Rician noise scale (std 0.16-0.8 x image std)",
  ),
  "rician_noise": Corruption(
    ops.rician_noise,
    {"sigma": _ROOD_NOISE},
    "Rician noise (magnitude of complex Gaussian noise), std sigma x the "
    "image's std",
    "ROOD-MRI RicianNoise (MONAI, relative=True, std 0.16-0.8)",
  ),
  "blur": Corruption(
    ops.blur,
    {"sigma": _levels(0, 0.8, 1.6, 2.4, 3.2, 4.0)},
    "isotropic Gaussian blur, sigma in voxels",
    "ROOD-MRI Smoothing (TorchIO Blur, std 0.8-4 mm; voxels here)",
  ),
  "bias_field": Corruption(
    ops.bias_field,
    {"coefficient": _levels(0, 0.3, 0.6, 0.9, 1.2, 1.5)},
    "smooth multiplicative field exp(cubic polynomial), coefficients "
    "uniform in [-c, c]",
    "ROOD-MRI BiasField (TorchIO RandomBiasField, c = 0.3-1.5)",
  ),
  "contrast_compression": Corruption(
    ops.contrast_compression,
    {"gamma": _levels(1, 0.86, 0.72, 0.58, 0.44, 0.3)},
    "gamma < 1 on the image rescaled to [0, 1]",
    "ROOD-MRI ContrastCompression (MONAI AdjustContrast, gamma 0.86-0.3)",
  ),
  "contrast_expansion": Corruption(
    ops.contrast_expansion,
    {"gamma": _levels(1, 1.4, 1.8, 2.2, 2.6, 3.0)},
    "gamma > 1 on the image rescaled to [0, 1]",
    "ROOD-MRI ContrastExpansion (MONAI AdjustContrast, gamma 1.4-3)",
  ),
  "ghosting": Corruption(
    ops.ghosting,
    {"intensity": _levels(0, 0.5, 1.0, 1.5, 2.0, 2.5)},
    "every n-th k-space line (n random, 3-11) along a random axis scaled "
    "by 1 - intensity",
    "ROOD-MRI Ghosting (TorchIO RandomGhosting, intensity 0.5-2.5; its "
    "3-11 ghosts drawn per key, not graded)",
  ),
  "motion": Corruption(
    ops.motion,
    {
      "degrees": _levels(0, 1, 2, 3, 4, 5),
      "translation": _levels(0, 2, 4, 6, 8, 10),
    },
    "2-10 rigid movements (random) during the scan, k-space assembled "
    "from the poses",
    "ROOD-MRI RandomMotion (TorchIO, 1-5 degrees, 2-10 mm; voxels here; "
    "its 2-10 movements drawn per key, not graded)",
  ),
  "spike": Corruption(
    ops.spike,
    {"intensity": _levels(0, 0.2, 0.4, 0.6, 0.8, 1.0)},
    "one k-space spike: stripes of amplitude intensity x the mean",
    "ours (ROOD-MRI has no spike); TorchIO RandomSpike's default 1-3 x "
    "the spectrum's peak lies beyond severity 5",
  ),
  "anisotropy": Corruption(
    ops.anisotropy,
    {"factor": _levels(1, 2.8, 4.6, 6.4, 8.2, 10.0)},
    "down-sampling by a factor along one random axis, linear back",
    "ROOD-MRI AnisoDownsample (TorchIO RandomAnisotropy, factor 2.8-10)",
  ),
}

NAMES = tuple(CORRUPTIONS)


def get(name: str) -> Corruption:
  """The corruption called ``name``; ValueError listing the valid names."""
  if name not in CORRUPTIONS:
    raise ValueError(
      f"Unknown corruption {name!r}; valid: {', '.join(NAMES)} (or 'all')."
    )
  return CORRUPTIONS[name]


def resolve(names: str | Sequence[str]) -> tuple[str, ...]:
  """Parses ``"all"``, ``"motion,ghosting"`` or a sequence of names.

  Returns:
    The names, in the order given (``"all"``: registry order), each once.

  Raises:
    ValueError: on an unknown name or an empty list, listing valid names.
  """
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  names = list(names)
  if names == ["all"]:
    return NAMES
  if not names:
    raise ValueError(f"No corruption named; valid: {', '.join(NAMES)}.")
  for name in names:
    get(name)
  return tuple(dict.fromkeys(names))


def check_severity(severity: float) -> float:
  """``severity`` as a float in ``[0, 5]``; ValueError otherwise."""
  if (
    not isinstance(severity, numbers.Real)
    or isinstance(severity, bool)
    or not 0 <= severity <= MAX_SEVERITY
  ):
    raise ValueError(
      f"Severity {severity!r} is not a number in [0, {MAX_SEVERITY}] (0 is "
      f"the clean image, {SEVERITIES} the graded levels)."
    )
  return float(severity)


def parameters(name: str, severity: float) -> dict[str, float]:
  """The strengths of ``name`` at a (Python) ``severity`` in [0, 5].

  >>> parameters("motion", 2.5)
  {'degrees': 2.5, 'translation': 5.0}
  """
  severity = check_severity(severity)
  levels = np.arange(MAX_SEVERITY + 1, dtype=np.float64)
  return {
    key: float(np.interp(severity, levels, values))
    for key, values in get(name).table.items()
  }


def _static(severity) -> float | None:
  """A Python severity's value, or None for a traced one."""
  if isinstance(severity, numbers.Real) and not isinstance(severity, bool):
    return check_severity(severity)
  if isinstance(severity, np.ndarray) and severity.shape == ():
    return check_severity(float(severity))
  return None


def corrupt(
  name: str,
  key: jax.Array,
  image: jax.typing.ArrayLike,
  severity: jax.typing.ArrayLike,
  mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """Corrupts ONE image with corruption ``name`` at ``severity``.

  Deterministic: the same name, key, image and severity give the same
  output, on any backend that gives the same random bits. Pure and
  shape-static, so it runs under ``jit`` (``name`` static) and ``vmap``
  (over keys, images, masks and severities). The draws (noise, axis,
  movement times...) depend only on the key, not on the severity: one key
  across severities gives the same artefact, only stronger.

  Args:
    name: a key of ``CORRUPTIONS``.
    key: PRNG key (typed or raw ``uint32[2]``).
    image: ``f[*S, C]``, channels last, ``S`` of rank 2 or 3; integer
      images become f32.
    severity: 0 (identity) to 5; a Python number or a traced scalar.
      Fractional values interpolate the strength table linearly.
    mask: optional ``f[*S]``, 1 on real voxels and 0 on padding; padding
      keeps its values and is left out of the image statistics.

  Returns:
    The corrupted image, same shape and (float) dtype; the input itself at
    severity 0.

  Raises:
    ValueError: for an unknown name, a severity outside [0, 5] or an image
      that is not ``[*S, C]`` with 2 or 3 spatial axes.
  """
  spec = get(name)
  image = jnp.asarray(image)
  if not jnp.issubdtype(image.dtype, jnp.floating):
    image = image.astype(jnp.float32)
  if image.ndim not in (3, 4):
    raise ValueError(
      f"corrupt {name!r}: image must be [*S, C] with 2 or 3 spatial axes "
      f"(channels last), got shape {image.shape}."
    )
  if _static(severity) == 0:
    return image
  if mask is None:
    real = jnp.ones((*image.shape[:-1], 1), bool)
  else:
    mask = jnp.asarray(mask)
    if mask.shape != image.shape[:-1]:
      raise ValueError(
        f"corrupt {name!r}: mask shape {mask.shape} must be the image's "
        f"spatial shape {image.shape[:-1]}."
      )
    real = (mask > 0)[..., None]
  level = jnp.clip(jnp.asarray(severity, jnp.float32), 0, MAX_SEVERITY)
  grid = jnp.arange(MAX_SEVERITY + 1, dtype=jnp.float32)
  strengths = {
    k: jnp.interp(level, grid, jnp.asarray(v, jnp.float32))
    for k, v in spec.table.items()
  }
  out = spec.fn(key, image, real, **strengths)
  out = jnp.where(real, out.astype(image.dtype), image)
  return jnp.where(level > 0, out, image)


def corrupt_example(
  name: str,
  key: jax.Array,
  example: Mapping[str, jax.typing.ArrayLike],
  severity: jax.typing.ArrayLike,
) -> dict[str, jax.typing.ArrayLike]:
  """:func:`corrupt` on ``example["image"]`` (with ``example["mask"]`` if
  present); every other entry, the label included, is passed through
  untouched (the same objects)."""
  image = corrupt(name, key, example["image"], severity, example.get("mask"))
  return {**example, "image": image}


def random_corruption(
  key: jax.Array,
  example: Mapping[str, jax.typing.ArrayLike],
  names: Sequence[str],
  severity: tuple[float, float],
) -> dict[str, jax.typing.ArrayLike]:
  """One of ``names``, uniformly, at a severity uniform in ``severity``.

  The augmentation op ``dict(op="corruption", names=..., severity=...)``
  of :mod:`medseg_jax.augment`. Under ``vmap`` every listed corruption is
  computed and one is selected per example, so a long list costs the sum
  of its members.
  """
  names = resolve(names)
  low, high = (check_severity(s) for s in severity)
  k_pick, k_level, k_op = jax.random.split(key, 3)
  level = jax.random.uniform(k_level, (), minval=low, maxval=high)

  def branch(name):
    return lambda: corrupt_example(name, k_op, example, level)["image"]

  if len(names) == 1:
    image = branch(names[0])()
  else:
    pick = jax.random.randint(k_pick, (), 0, len(names))
    image = jax.lax.switch(pick, [branch(n) for n in names])
  return {**example, "image": image}


def describe() -> str:
  """A Markdown table of every corruption's strengths at severities 1-5."""
  lines = [
    "| corruption | strength | " + " | ".join(map(str, SEVERITIES)) + " |",
    "|---|---|" + "---|" * len(SEVERITIES),
  ]
  for name, spec in CORRUPTIONS.items():
    for key, values in spec.table.items():
      cells = " | ".join(f"{v:g}" for v in values[1:])
      lines.append(f"| {name} | {key} | {cells} |")
  return "\n".join(lines)
