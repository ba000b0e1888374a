"""Transfer learning: take weights from another run, freeze or re-weight parts.

Parameters are addressed by their slash-joined path inside the variables,
e.g. ``down_0/conv_0/kernel`` or ``head/bias`` (no ``params/`` prefix). All
patterns are Python regular expressions matched with ``re.search``.

Loading (``config.init_from`` and friends):

* ``init_include``: only target paths matching one of these are loaded
  (empty: all);
* ``init_exclude``: target paths matching one of these keep their fresh
  initialisation (e.g. ``["^head/"]`` to re-learn the classifier);
* ``init_rename``: ``[(pattern, replacement), ...]`` applied in order to a
  *target* path to find its name in the source checkpoint (e.g. to load a
  ``backbone/`` subtree saved under another prefix).

A target leaf whose source is missing or has another shape (a different
number of input channels or classes) keeps its fresh initialisation and is
reported; nothing is silently broadcast or cropped. The one exception is
asked for by name: with ``init_upkern`` (UpKern, Roy et al. 2023, MedNeXt)
a convolution kernel ``f[*K, C_in, C_out]`` whose source has the same
channels but smaller spatial taps is linearly resized (``upkern``), e.g. a
trained kernel-3 MedNeXt initialises a kernel-5 one; such leaves are
reported as resized.

Training (``config.optimizer.param_groups``): a list of
``dict(pattern=..., lr_scale=...)`` or ``dict(pattern=..., freeze=True)``;
each parameter takes the first group whose pattern matches, otherwise the
default group. Frozen parameters receive exactly zero updates (no weight
decay either), so they stay bit-identical.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def path_name(path: tuple[Any, ...]) -> str:
  """``(DictKey('down_0'), DictKey('kernel'))`` -> ``"down_0/kernel"``."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def flatten(tree: Any) -> dict[str, Any]:
  """Pytree -> ``{path_name: leaf}``."""
  return {
    path_name(path): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


@dataclasses.dataclass
class LoadReport:
  """What ``merge`` took from the source and what it left fresh."""

  loaded: list[str] = dataclasses.field(default_factory=list)
  excluded: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)
  shape_mismatch: list[tuple[str, tuple, tuple]] = dataclasses.field(
    default_factory=list
  )
  unused: list[str] = dataclasses.field(default_factory=list)
  resized: list[tuple[str, tuple, tuple]] = dataclasses.field(
    default_factory=list
  )

  @property
  def reinitialised(self) -> list[str]:
    """Target paths that kept their fresh initialisation, for any reason."""
    return (
      self.excluded
      + self.missing
      + [name for name, _, _ in self.shape_mismatch]
    )

  def summary(self) -> str:
    lines = [
      f"loaded {len(self.loaded)} arrays; re-initialised "
      f"{len(self.reinitialised)}; unused in source {len(self.unused)}."
    ]
    if self.resized:
      lines[0] += f" {len(self.resized)} of the loaded were resized (UpKern)."
    for name, want, have in self.resized:
      lines.append(f"  resized {name}: source {have} -> model {want}")
    for name, want, have in self.shape_mismatch:
      lines.append(f"  shape mismatch {name}: model {want}, source {have}")
    for name in self.missing:
      lines.append(f"  not in source: {name}")
    for name in self.excluded:
      lines.append(f"  excluded: {name}")
    for name in self.loaded:
      lines.append(f"  loaded: {name}")
    return "\n".join(lines)


def _matches(name: str, patterns: Sequence[str]) -> bool:
  return any(re.search(pattern, name) for pattern in patterns)


def merge(
  target: Any,
  source: Mapping[str, Any] | Any,
  *,
  include: Sequence[str] = (),
  exclude: Sequence[str] = (),
  rename: Sequence[tuple[str, str]] = (),
  upkern: bool = False,
) -> tuple[Any, LoadReport]:
  """Copies matching leaves of ``source`` into ``target``.

  Args:
    target: the freshly initialised pytree (e.g. ``params``).
    source: a pytree or a flat ``{path: array}`` dict from a checkpoint.
    include: if non-empty, only target paths matching one are loaded.
    exclude: target paths matching one are left as initialised.
    rename: ``(pattern, replacement)`` pairs turning a target path into its
      source path (``re.sub``, applied in order).
    upkern: resize convolution kernels whose source has fewer spatial taps
      (same rank and channels) with ``upkern`` instead of leaving them
      fresh; they count as loaded and are also listed in ``resized``.

  Returns:
    ``(merged, report)``; ``merged`` has ``target``'s structure and dtypes.
  """
  flat_source = flatten(source)  # A flat {"a/b": x} dict flattens to itself.
  report = LoadReport()
  used = set()

  def pick(path, leaf):
    name = path_name(path)
    if (include and not _matches(name, include)) or _matches(name, exclude):
      report.excluded.append(name)
      return leaf
    source_name = name
    for pattern, replacement in rename:
      source_name = re.sub(pattern, replacement, source_name)
    if source_name not in flat_source:
      report.missing.append(name)
      return leaf
    value = flat_source[source_name]
    used.add(source_name)
    have, want = tuple(np.shape(value)), tuple(leaf.shape)
    if upkern and have != want and _upkernable(name, have, want):
      report.loaded.append(name)
      report.resized.append((name, want, have))
      return upkern_kernel(value, want).astype(leaf.dtype)
    if have != want:
      report.shape_mismatch.append(
        (name, tuple(leaf.shape), tuple(np.shape(value)))
      )
      return leaf
    report.loaded.append(name)
    return np.asarray(value, dtype=leaf.dtype)

  merged = jax.tree_util.tree_map_with_path(pick, target)
  report.unused = sorted(set(flat_source) - used)
  return merged, report


def _upkernable(name: str, have: tuple, want: tuple) -> bool:
  """A kernel with the same rank and channels and no smaller taps."""
  return (
    name.endswith("kernel")
    and len(have) == len(want) >= 3
    and have[-2:] == want[-2:]
    and all(h <= w for h, w in zip(have[:-2], want[:-2], strict=True))
  )


def upkern_kernel(kernel: Any, shape: Sequence[int]) -> np.ndarray:
  """UpKern: a convolution kernel linearly resized to larger spatial taps.

  MedNeXt's authors (MIC-DKFZ/MedNeXt, ``run/load_weights.py``) resize each
  kernel whose spatial size differs with ``torch.nn.functional.interpolate(
  mode="trilinear")``, whose default is ``align_corners=False``: output
  tap ``j`` of ``K_out`` samples the source at ``(j + 0.5) * K_in / K_out -
  0.5``, clamped to the border. ``jax.image.resize(method="linear")``
  computes the same when enlarging (bilinear in 2-D); the tests compare it
  with torch. The paper describes it as trilinear upsampling. It is not a
  centre padding: the kernel-5 network starts close to, not equal to, the
  kernel-3 one.

  Args:
    kernel: ``f[*K_in, C_in, C_out]``.
    shape: ``[*K_out, C_in, C_out]``; the channel axes must match.

  Returns:
    ``f32[*K_out, C_in, C_out]``.
  """
  kernel = np.asarray(kernel, np.float32)
  if tuple(shape[-2:]) != kernel.shape[-2:] or len(shape) != kernel.ndim:
    raise ValueError(
      f"UpKern resizes spatial axes only; got {kernel.shape} -> {tuple(shape)}."
    )
  return np.asarray(
    jax.image.resize(jnp.asarray(kernel), tuple(shape), "linear")
  )


# ---------------------------------------------------------------------------
# Parameter groups: freezing and per-group learning rates.
# ---------------------------------------------------------------------------

FROZEN = "frozen"
DEFAULT = "default"


def group_labels(params: Any, groups: Sequence[Mapping[str, Any]]) -> Any:
  """A pytree like ``params`` of group labels (first matching pattern)."""

  def label(path, leaf):
    del leaf
    name = path_name(path)
    for index, group in enumerate(groups):
      if re.search(group["pattern"], name):
        return FROZEN if group.get("freeze", False) else f"group_{index}"
    return DEFAULT

  return jax.tree_util.tree_map_with_path(label, params)


def check_groups(params: Any, groups: Sequence[Mapping[str, Any]]) -> None:
  """Raises if a group's pattern matches no parameter (likely a typo)."""
  names = list(flatten(params))
  for group in groups:
    if "pattern" not in group:
      raise ValueError(f"Parameter group {dict(group)} has no 'pattern'.")
    if not any(re.search(group["pattern"], name) for name in names):
      raise ValueError(
        f"Parameter group pattern {group['pattern']!r} matches no "
        f"parameter; names look like {names[:5]}."
      )


def grouped_optimizer(
  make_tx,
  schedule: optax.Schedule,
  groups: Sequence[Mapping[str, Any]],
) -> optax.GradientTransformation:
  """``optax.multi_transform`` over the groups of ``group_labels``.

  Args:
    make_tx: ``schedule -> GradientTransformation`` for trainable groups.
    schedule: the base learning-rate schedule.
    groups: ``dict(pattern=..., lr_scale=...)`` or ``dict(pattern=...,
      freeze=True)`` entries.
  """
  transforms = {DEFAULT: make_tx(schedule), FROZEN: optax.set_to_zero()}
  for index, group in enumerate(groups):
    if group.get("freeze", False):
      continue
    scale = float(group.get("lr_scale", 1.0))
    transforms[f"group_{index}"] = make_tx(
      lambda step, scale=scale: schedule(step) * scale
    )
  return optax.multi_transform(
    transforms, lambda params: group_labels(params, groups)
  )
