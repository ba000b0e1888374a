"""The augmentation registry, config validation and the batch pipeline.

A config lists augmentations as dicts::

  specs = [
    dict(op="elastic", p=0.3, magnitude=(0, 8), grid=(6, 6)),
    dict(op="gamma", p=0.5, gamma=(0.7, 1.5)),
  ]
  augment = build(specs)                  # ValueError on a bad spec
  batch = augment(key, batch)             # image: f32[B, *S, C], ...
  example = augment.augment_example(key, example)   # one example

Each op runs with probability ``p`` per example (default 1). ``p == 0``
skips the op statically; otherwise the op output is chosen with
``lax.cond`` (a ``select`` under ``vmap``), so an example that was not
drawn is returned bit for bit. Op ``i`` draws from ``fold_in(key, i)``, so
the draws of one op do not depend on the other ops' parameters.

Consecutive geometric ops that include an interpolating one (affine,
elastic) are composed: their maps of positions are chained and the example
is resampled once, from the input of the run. That is cheaper than one
resampling per op (XLA would otherwise recompute each upstream
interpolation inside every corner gather of the next) and blurs the image
once instead of repeatedly. ``elastic`` closes a run (its displacement
field lives on the grid), so list it after ``affine``. A run of flips and
rot90 alone stays an exact voxel permutation.
"""

import dataclasses
import functools
import numbers
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from medseg_jax.augment import intensity
from medseg_jax.augment import sampling
from medseg_jax.augment import spatial

Example = dict[str, Any]
OpFn = Callable[..., Example]
SPATIAL_KEYS = ("image", "label", "mask")


@dataclasses.dataclass(frozen=True)
class Param:
  """One keyword option of an op and how to validate it.

  Attributes:
    default: the value used when the spec omits the key.
    kind: ``"range"`` (a ``(low, high)`` pair), ``"ranges"`` (one pair or a
      sequence of pairs, e.g. per axis), ``"prob"`` (a number in [0, 1]),
      ``"number"``, ``"bool"``, ``"choice"``, ``"axes"`` (None or distinct
      non-negative ints), ``"planes"`` (None or pairs of distinct axes),
      ``"ints"`` (an int or a sequence of ints, each >= ``low``),
      ``"corruptions"`` (``"all"``, one name of
      :mod:`medseg_jax.corruptions` or a sequence of them).
    low: smallest allowed value (range entries, numbers, ints).
    high: largest allowed value.
    strict: ``low`` itself is not allowed (``> low``).
    choices: valid values for ``"choice"``.
    help: what the option means, for error messages.
  """

  default: Any
  kind: str
  low: float | None = None
  high: float | None = None
  strict: bool = False
  choices: tuple[Any, ...] = ()
  help: str = ""

  def valid(self) -> str:
    """What values are accepted, e.g. ``(low, high) with low <= high``."""
    bound = []
    if self.low is not None:
      bound.append(f"{'>' if self.strict else '>='} {self.low}")
    if self.high is not None:
      bound.append(f"<= {self.high}")
    bound = " and ".join(bound)
    kinds = {
      "range": "(low, high) with low <= high"
      + (f", values {bound}" if bound else ""),
      "ranges": "(low, high), or one such pair per axis"
      + (f", values {bound}" if bound else ""),
      "prob": "a probability in [0, 1]",
      "number": "a number" + (f" {bound}" if bound else ""),
      "bool": "True or False",
      "choice": f"one of {list(self.choices)}",
      "axes": "None or a sequence of distinct spatial axes",
      "planes": "None or a sequence of (axis, axis) pairs",
      "ints": "an int or one int per axis" + (f", {bound}" if bound else ""),
      "corruptions": "'all', a corruption name or a sequence of them, "
      f"from {list(_corruption_names())}",
    }
    return kinds[self.kind]

  def describe(self) -> str:
    """Meaning, valid values and default, for listings."""
    text = f"{self.valid()} (default {self.default!r})"
    return f"{self.help}: {text}" if self.help else text


@dataclasses.dataclass(frozen=True)
class OpSpec:
  """A registered op: its function, options and whether it moves voxels.

  Attributes:
    fn: ``fn(key, example, **params) -> example`` on one example.
    params: option name -> :class:`Param` (``p`` is implicit).
    geometric: True if the op moves voxels (label and mask change too).
    doc: one line for listings.
    points: for geometric ops, ``points(key, points, shape, **params) ->
      points``: where each output position samples the op's input, with
      the same draws as ``fn``; used to compose runs of geometric ops.
    interpolates: the op resamples (not an exact voxel permutation).
    grid_only: ``points`` accepts the identity grid only, so the op must
      be the last of a composed run.
  """

  fn: OpFn
  params: Mapping[str, Param]
  geometric: bool
  doc: str = ""
  points: Callable[..., jax.Array] | None = None
  interpolates: bool = False
  grid_only: bool = False


def _range(default, low=None, high=None, strict=False, help="") -> Param:
  return Param(default, "range", low, high, strict, help=help)


def _corruption_names() -> tuple[str, ...]:
  # Imported here: medseg_jax.corruptions builds on this package's helpers.
  from medseg_jax import corruptions  # noqa: PLC0415

  return corruptions.NAMES


def corruption(
  key: jax.Array,
  example: Example,
  names: str | Sequence[str] = "all",
  severity: tuple[float, float] = (0.0, 3.0),
) -> Example:
  """A graded MRI artefact of :mod:`medseg_jax.corruptions`, image only.

  Draws one of ``names`` uniformly and a severity uniformly in
  ``severity`` (fractional severities interpolate the corruption's
  strength table), per example; label and mask are untouched, padding
  keeps its values. See ``medseg_jax.corruptions.random_corruption``.

  Args:
    key: PRNG key.
    example: one example (``image: f[*S, C]``, ``mask: f[*S]``).
    names: ``"all"``, one corruption name, or a sequence of them.
    severity: ``(low, high)`` within [0, 5].

  Returns:
    The example with a new image.
  """
  from medseg_jax import corruptions  # noqa: PLC0415

  return corruptions.random_corruption(key, example, names, severity)


AUGMENTATIONS: dict[str, OpSpec] = {
  "flip": OpSpec(
    spatial.flip,
    {
      "axes": Param(None, "axes", help="spatial axes that may flip"),
      "axis_p": Param(0.5, "prob", help="flip probability per axis"),
    },
    geometric=True,
    points=spatial.flip_points,
    doc="mirror each spatial axis independently",
  ),
  "rot90": OpSpec(
    spatial.rot90,
    {
      "planes": Param(
        None,
        "planes",
        help="candidate planes (None: every square plane); each must be "
        "square in the example",
      ),
    },
    geometric=True,
    points=spatial.rot90_points,
    doc="rotate by k * 90 degrees in a random square plane",
  ),
  "affine": OpSpec(
    spatial.affine,
    {
      "rotation": Param(
        ((-15.0, 15.0),),
        "ranges",
        help="degrees; 2-D: 1 angle, 3-D: 3 angles (about axes 0, 1, 2)",
      ),
      "scale": _range((0.85, 1.15), 0.0, strict=True, help="zoom factor"),
      "per_axis_scale": Param(False, "bool", help="one zoom per axis"),
      "shear": _range((0.0, 0.0), help="off-diagonal shear entries"),
      "translation": Param(
        ((0.0, 0.0),), "ranges", help="shift as a fraction of the axis size"
      ),
    },
    geometric=True,
    points=spatial.affine_points,
    interpolates=True,
    doc="random rotation, scale, shear and translation",
  ),
  "elastic": OpSpec(
    spatial.elastic,
    {
      "magnitude": _range(
        (0.0, 8.0), 0.0, help="displacement std at control nodes, voxels"
      ),
      "grid": Param(6, "ints", low=2, help="control nodes per axis"),
    },
    geometric=True,
    points=spatial.elastic_points,
    interpolates=True,
    grid_only=True,
    doc="cubic-interpolated random displacements (U-Net)",
  ),
  "gamma": OpSpec(
    intensity.gamma,
    {
      "gamma": _range((0.7, 1.5), 0.0, strict=True, help="exponent"),
      "per_channel": Param(False, "bool"),
      "invert": Param(False, "bool", help="gamma on inverted intensities"),
    },
    geometric=False,
    doc="gamma on the image rescaled to [0, 1] per channel",
  ),
  "brightness": OpSpec(
    intensity.brightness,
    {
      "factor": _range((0.75, 1.25), 0.0, help="multiplicative"),
      "delta": _range((0.0, 0.0), help="additive, image units"),
      "per_channel": Param(False, "bool"),
    },
    geometric=False,
    doc="x * factor + delta",
  ),
  "contrast": OpSpec(
    intensity.contrast,
    {
      "factor": _range((0.75, 1.25), 0.0, help="contrast factor"),
      "preserve_range": Param(True, "bool", help="clip to original range"),
      "per_channel": Param(False, "bool"),
    },
    geometric=False,
    doc="(x - mean) * factor + mean",
  ),
  "noise": OpSpec(
    intensity.noise,
    {"sigma": _range((0.0, 0.1), 0.0, help="noise std, image units")},
    geometric=False,
    doc="additive Gaussian noise",
  ),
  "blur": OpSpec(
    intensity.blur,
    {
      "sigma": _range((0.5, 1.5), 0.0, help="Gaussian std, voxels"),
      "per_axis": Param(False, "bool", help="one sigma per axis"),
      "truncate": Param(
        3.0, "number", 0.0, strict=True, help="kernel radius in stds"
      ),
    },
    geometric=False,
    doc="separable Gaussian blur",
  ),
  "low_resolution": OpSpec(
    intensity.low_resolution,
    {
      "factor": _range((1.0, 2.0), 1.0, help="downsampling factor"),
      "order": Param(
        "nearest", "choice", choices=("nearest", "linear"), help="downsampling"
      ),
      "per_axis": Param(False, "bool", help="one factor per axis"),
      "axes": Param(None, "axes", help="spatial axes to degrade"),
    },
    geometric=False,
    doc="downsample by a random factor, upsample linearly",
  ),
  "corruption": OpSpec(
    corruption,
    {
      "names": Param(
        "all", "corruptions", help="corruptions drawn from, one per example"
      ),
      "severity": _range(
        (0.0, 3.0), 0.0, 5.0, help="severity range (0 clean, 1-5 graded)"
      ),
    },
    geometric=False,
    doc="an MRI artefact (noise, blur, bias, gamma, ghosting, motion, "
    "spike, anisotropy) at a random severity (medseg_jax.corruptions)",
  ),
}


# Names that configs used before the two vocabularies became one, and the
# entry of config.augment that replaces each (in error messages).
REMOVED_OPS: dict[str, str] = {
  "random_flip": (
    "dict(op='flip', axes=AXES, axis_p=P) (the old per-axis probability p "
    "is axis_p; axes=None flips every spatial axis)"
  ),
}


class _Invalid(Exception):
  """What is wrong with one option value."""


def _is_number(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_bounds(value: float, param: Param) -> bool:
  if param.low is not None:
    if value < param.low or (param.strict and value == param.low):
      return False
  return param.high is None or value <= param.high


def _is_sequence(value: Any) -> bool:
  return isinstance(value, Sequence) and not isinstance(value, str)


def _pair(value: Any, param: Param) -> tuple[float, float]:
  """Normalises a ``(low, high)`` pair; raises `_Invalid` if it is bad."""
  if (
    not _is_sequence(value)
    or len(value) != 2
    or not all(_is_number(v) for v in value)
  ):
    raise _Invalid("expected a (low, high) pair of numbers")
  low, high = float(value[0]), float(value[1])
  if low > high:
    raise _Invalid("low > high")
  if not (_check_bounds(low, param) and _check_bounds(high, param)):
    raise _Invalid("value out of bounds")
  return (low, high)


def _axes(value: Any) -> tuple[int, ...] | None:
  if value is None:
    return None
  if not _is_sequence(value):
    raise _Invalid("expected None or a sequence of axes")
  if not all(isinstance(a, int) and not isinstance(a, bool) for a in value):
    raise _Invalid("axes must be ints")
  if any(a < 0 for a in value) or len(set(value)) != len(value):
    raise _Invalid("axes must be distinct and non-negative")
  return tuple(value)


def _normalise(param: Param, value: Any) -> Any:
  """Returns the normalised (hashable) value; raises `_Invalid` if bad."""
  kind = param.kind
  if kind == "range":
    return _pair(value, param)
  if kind == "ranges":
    if _is_sequence(value) and value and all(_is_sequence(v) for v in value):
      return tuple(_pair(v, param) for v in value)
    return (_pair(value, param),)
  if kind in ("prob", "number"):
    if not _is_number(value):
      raise _Invalid("expected a number")
    if kind == "prob" and not 0.0 <= value <= 1.0:
      raise _Invalid("probability outside [0, 1]")
    if not _check_bounds(value, param):
      raise _Invalid("value out of bounds")
    return float(value)
  if kind == "bool":
    if not isinstance(value, bool):
      raise _Invalid("expected True or False")
    return value
  if kind == "corruptions":
    valid = _corruption_names()
    names = (value,) if isinstance(value, str) else value
    if (
      not _is_sequence(names)
      or not names
      or not all(isinstance(n, str) for n in names)
    ):
      raise _Invalid("expected 'all', a name or a sequence of names")
    if tuple(names) == ("all",):
      return "all"
    unknown = [n for n in names if n not in valid]
    if unknown:
      raise _Invalid(f"unknown corruption(s) {unknown}")
    return tuple(dict.fromkeys(names))
  if kind == "choice":
    if value not in param.choices:
      raise _Invalid("not a valid choice")
    return value
  if kind == "axes":
    return _axes(value)
  if kind == "planes":
    if value is None:
      return None
    if not _is_sequence(value):
      raise _Invalid("expected None or a sequence of (axis, axis) pairs")
    planes = tuple(_axes(plane) for plane in value)
    if any(plane is None or len(plane) != 2 for plane in planes):
      raise _Invalid("each plane must be two distinct non-negative axes")
    return planes
  if kind == "ints":
    values = (value,) if isinstance(value, int) else value
    if (
      not _is_sequence(values)
      or not values
      or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    ):
      raise _Invalid("expected an int or a sequence of ints")
    if not all(_check_bounds(v, param) for v in values):
      raise _Invalid("value out of bounds")
    return value if isinstance(value, int) else tuple(values)
  raise AssertionError(f"unknown Param kind {kind!r}")


def _valid_keys(name: str) -> str:
  params = AUGMENTATIONS[name].params
  lines = [
    "  p: probability of applying the op per example, in [0, 1] (default 1.0)"
  ]
  lines += [f"  {key}: {param.describe()}" for key, param in params.items()]
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Step:
  """One validated op of a pipeline.

  Attributes:
    op: registry name.
    p: probability of applying it per example.
    params: normalised keyword options as ``(name, value)`` pairs.
  """

  op: str
  p: float
  params: tuple[tuple[str, Any], ...]

  def fn(self) -> OpFn:
    """``fn(key, example) -> example`` with the options bound."""
    return functools.partial(AUGMENTATIONS[self.op].fn, **dict(self.params))

  def points(self) -> Callable[..., jax.Array]:
    """``points(key, points, shape) -> points`` with the options bound."""
    return functools.partial(AUGMENTATIONS[self.op].points, **dict(self.params))


def _as_example(example: Mapping[str, Any]) -> Example:
  """Converts image/label/mask to jnp; adds a mask of ones if missing."""
  for name in ("image", "label"):
    if name not in example:
      raise ValueError(
        f"augment: example needs 'image' and 'label', got {sorted(example)}."
      )
  image = jnp.asarray(example["image"])
  if not jnp.issubdtype(image.dtype, jnp.floating):
    image = image.astype(jnp.float32)
  label = jnp.asarray(example["label"])
  if label.shape != image.shape[:-1]:
    raise ValueError(
      f"augment: label shape {label.shape} must be the image's spatial "
      f"shape {image.shape[:-1]} (image is [*S, C], channels last)."
    )
  if "mask" in example:
    mask = jnp.asarray(example["mask"], jnp.float32)
    if mask.shape != label.shape:
      raise ValueError(
        f"augment: mask shape {mask.shape} must equal label shape "
        f"{label.shape}."
      )
  else:
    mask = jnp.ones(label.shape, jnp.float32)
  return {"image": image, "label": label, "mask": mask}


@dataclasses.dataclass(frozen=True)
class Augment:
  """A validated list of augmentations; build it with :func:`build`.

  Pure and picklable (only op names and static options are stored), so it
  can be closed over by a jitted train step or shipped to grain workers.

  Attributes:
    steps: the ops in order.
    fuse: compose runs of geometric ops into one resampling (see the
      module docstring); False resamples after every op.
  """

  steps: tuple[Step, ...]
  fuse: bool = True

  def _runs(self) -> list[list[tuple[int, Step]]]:
    """Groups the drawn ops (p > 0) into runs that are applied together."""
    runs, current = [], []
    for i, step in enumerate(self.steps):
      if step.p == 0.0:
        continue
      spec = AUGMENTATIONS[step.op]
      if not (self.fuse and spec.points is not None):
        runs += [current, [(i, step)]]
        current = []
        continue
      current.append((i, step))
      if spec.grid_only:
        runs.append(current)
        current = []
    runs.append(current)
    return [run for run in runs if run]

  @staticmethod
  def _apply(key: jax.Array, i: int, step: Step, example: Example) -> Example:
    fn = step.fn()
    k_apply, k_op = jax.random.split(jax.random.fold_in(key, i))
    if step.p == 1.0:
      return fn(k_op, example)
    return lax.cond(
      jax.random.bernoulli(k_apply, step.p),
      lambda ex: fn(k_op, ex),
      lambda ex: ex,
      example,
    )

  @staticmethod
  def _warp(
    key: jax.Array, run: list[tuple[int, Step]], example: Example
  ) -> Example:
    """Applies a run of geometric ops with one resampling.

    Output position ``y`` of the last op samples its input at ``c_k(y)``,
    which sampled its own input at ``c_{k-1}(c_k(y))``, and so on: the maps
    are applied last op first, each where its coin came up, and the run's
    input is resampled once at the result.
    """
    shape = example["label"].shape
    points = sampling.identity_grid(shape)
    for i, step in reversed(run):
      k_apply, k_op = jax.random.split(jax.random.fold_in(key, i))
      moved = step.points()(k_op, points, shape)
      if step.p == 1.0:
        points = moved
      else:
        apply = jax.random.bernoulli(k_apply, step.p)
        points = jnp.where(apply, moved, points)
    return sampling.resample(example, points)

  def augment_example(
    self, key: jax.Array, example: Mapping[str, Any]
  ) -> Example:
    """Augments ONE example.

    Args:
      key: PRNG key (typed or raw ``uint32[2]``).
      example: ``image: f[*S, C]``, ``label: int[*S]`` and optionally
        ``mask: f[*S]`` (missing: all ones); numpy or jax arrays. Other
        keys are passed through untouched.

    Returns:
      A new dict with jax arrays ``image`` (float, dtype kept; integer
      images become f32), ``label`` (dtype kept), ``mask: f32[*S]``, plus
      the other input keys.
    """
    current = _as_example(example)
    for run in self._runs():
      interpolates = any(AUGMENTATIONS[s.op].interpolates for _, s in run)
      if len(run) > 1 and interpolates:
        current = self._warp(key, run, current)
      else:
        for i, step in run:
          current = self._apply(key, i, step, current)
    return {**example, **current}

  def __call__(self, key: jax.Array, batch: Mapping[str, Any]) -> Example:
    """Augments a batch, one independent draw per example (``vmap``).

    Args:
      key: PRNG key for the whole batch; example ``b`` uses
        ``jax.random.split(key, B)[b]``.
      batch: ``image: f[B, *S, C]``, ``label: int[B, *S]`` and optionally
        ``mask: f[B, *S]``; other keys are passed through untouched.

    Returns:
      The augmented batch (same shapes; ``mask`` added if missing).
    """
    arrays = {k: batch[k] for k in SPATIAL_KEYS if k in batch}
    size = jnp.shape(arrays["image"])[0]
    keys = jax.random.split(key, size)
    out = jax.vmap(self.augment_example)(keys, arrays)
    return {**batch, **out}

  @property
  def ops(self) -> tuple[str, ...]:
    return tuple(step.op for step in self.steps)


def _validate(index: int, spec: Any) -> Step:
  where = f"augmentations[{index}]"
  if not isinstance(spec, Mapping):
    raise ValueError(
      f"{where}: expected dict(op=..., p=..., **options), got {spec!r}."
    )
  if "op" not in spec:
    raise ValueError(
      f"{where}: missing 'op'; valid ops: {sorted(AUGMENTATIONS)}."
    )
  name = spec["op"]
  if name not in AUGMENTATIONS:
    if name in REMOVED_OPS:
      hint = f" {name!r} was removed; use {REMOVED_OPS[name]}."
    else:
      hint = (
        " (Normalisation, crop and pad are not augmentations: they go in "
        "config.data.train_transforms.)"
      )
    raise ValueError(
      f"{where}: unknown augmentation op {name!r}; valid ops: "
      f"{sorted(AUGMENTATIONS)}.{hint}"
    )
  params = AUGMENTATIONS[name].params
  unknown = sorted(set(spec) - {"op", "p"} - set(params))
  if unknown:
    raise ValueError(
      f"{where}: augmentation op {name!r} has no option(s) {unknown}. "
      f"Valid keys:\n{_valid_keys(name)}"
    )
  p = spec.get("p", 1.0)
  if not _is_number(p) or not 0.0 <= p <= 1.0:
    raise ValueError(
      f"{where}: augmentation op {name!r}: p={p!r} must be a probability "
      f"in [0, 1]. Valid keys:\n{_valid_keys(name)}"
    )
  options = []
  for key, param in params.items():
    value = spec.get(key, param.default)
    try:
      normalised = _normalise(param, value)
    except _Invalid as e:
      raise ValueError(
        f"{where}: augmentation op {name!r}: {key}={value!r}: {e}; "
        f"expected {param.valid()}. Valid keys:\n{_valid_keys(name)}"
      ) from None
    options.append((key, normalised))
  return Step(name, float(p), tuple(options))


def build(
  specs: Sequence[Mapping[str, Any]] | None,
  spatial_shape: Sequence[int] | None = None,
) -> Augment:
  """Validates a config's augmentation list and returns the pipeline.

  Args:
    specs: e.g. ``[dict(op="elastic", p=0.3, magnitude=(0, 8), grid=6),
      dict(op="gamma", p=0.5, gamma=(0.7, 1.5))]``; ``None`` or ``[]`` is
      the identity. ``p`` defaults to 1.
    spatial_shape: optional patch shape ``S``; when given, the pipeline is
      also traced once on it (``jax.eval_shape``, no compute), so
      shape-dependent errors (a non-square rot90 plane, a per-axis option
      of the wrong length, an axis out of range) are raised now too.

  Returns:
    An :class:`Augment`.

  Raises:
    ValueError: on an unknown op, an unknown option, a bad range (low >
      high, out of bounds, e.g. a negative sigma) or p outside [0, 1]; the
      message names the op and lists the valid keys and ranges.
  """
  if specs is None:
    specs = ()
  if not _is_sequence(specs):
    raise ValueError(
      "augmentations must be a list of dict(op=..., p=..., **options), got "
      f"{specs!r}."
    )
  augment = Augment(tuple(_validate(i, s) for i, s in enumerate(specs)))
  if spatial_shape is not None:
    shape = tuple(int(n) for n in spatial_shape)
    if len(shape) not in (2, 3):
      raise ValueError(
        f"build: spatial_shape must have 2 or 3 axes, got {spatial_shape}."
      )
    forced = Augment(
      tuple(dataclasses.replace(s, p=1.0) for s in augment.steps)
    )
    example = {
      "image": jax.ShapeDtypeStruct(shape + (1,), jnp.float32),
      "label": jax.ShapeDtypeStruct(shape, jnp.int32),
      "mask": jax.ShapeDtypeStruct(shape, jnp.float32),
    }
    jax.eval_shape(forced.augment_example, jax.random.key(0), example)
  return augment
