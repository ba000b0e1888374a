r"""Choices made from the data itself, before training.

A dataset fingerprint (the shape and spacing of every training case, the
foreground intensities per channel, the class frequencies, the anisotropy)
drives a plan: target spacing, normalisation, patch and batch size fitted
to a device-memory budget, network depth and widths, foreground
oversampling, augmentations and a step budget, each with the reason for
it. nnU-Net (Isensee et al., 2021) made this the field's baseline; the
rules here are its rules, adapted to the models and pipeline of this code.

  python -m medseg_jax.plan --folder=/data/my_study            # a folder
  python -m medseg_jax.plan --dataset=isbi2012_em \
      --manual_dir=../shared/data/isbi2012_em_membrane \
      --output=plans/isbi2012_em                              # registered
  python -m medseg_jax.main --config=configs/auto.py:folder=/data/my_study \
      --workdir=workdirs/my_study                              # train it

The output directory (default `<folder>/medseg_plan`) holds
`fingerprint.json`, `plan.json` and `config.json` (the config the plan
trains with, for reading; `configs/auto.py` rebuilds it from `plan.json`,
so an edited plan trains as it stands). For a folder it also holds `data/`,
the folder's cases (linked, not copied) under a `dataset.json` that asks
for the planned spacing and leaves normalisation to the input pipeline.

The patch and batch size are fitted by compiling the real train step
(`jax.jit(...).lower(...).compile().memory_analysis()`) on the device the
plan runs on, so the memory figures are measured, not estimated: plan on
the kind of device you train on. One rule goes beyond nnU-Net's: on a
dataset of a few large cases the patch also shrinks until a batch of 2
covers at most 5 % of the training voxels, so that a batch is a sample of
the data and foreground oversampling changes what a patch holds.

The trainer's `_plan_patch` (configs/unet_folder.py without `patch=`) keeps
its single rule: `patch_for` shrinks a default patch to the median case
shape.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import pathlib
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import numpy as np

# Cases read to estimate the median shape: evenly spaced over the split.
MAX_CASES = 100


def median_shape(source: Any, max_cases: int = MAX_CASES) -> tuple[int, ...]:
  """The per-axis median spatial shape of the labels of a data source.

  Args:
    source: a random-access source of examples with a `label: int[*S]`
      (e.g. `registry.data_source(...)`).
    max_cases: read at most this many cases, evenly spaced.

  Raises:
    ValueError: if the source is empty.
  """
  n = len(source)
  if n == 0:
    raise ValueError("Cannot take the median shape of an empty split.")
  indices = np.unique(np.linspace(0, n - 1, min(n, max_cases)).astype(int))
  shapes = np.array([np.shape(source[int(i)]["label"]) for i in indices])
  return tuple(int(v) for v in np.median(shapes, axis=0))


def patch_for(
  median: Sequence[int], default: Sequence[int], multiple: int
) -> tuple[tuple[int, ...], str]:
  """The patch for cases of `median` shape, and why.

  Per axis: `default`, or the median rounded down to a multiple of
  `multiple` if that is smaller (never below `multiple`).

  Returns:
    `(patch, reason)`, the reason a sentence for the run's log.
  """
  if len(median) != len(default):
    raise ValueError(
      f"Median case shape {tuple(median)} and default patch "
      f"{tuple(default)} differ in rank."
    )
  patch = tuple(
    int(min(d, max(multiple, (m // multiple) * multiple)))
    for m, d in zip(median, default, strict=True)
  )
  if patch == tuple(default):
    reason = (
      f"the default {tuple(default)}, no larger than the median case "
      f"shape {tuple(median)}"
    )
  else:
    reason = (
      f"the median case shape {tuple(median)} rounded down to a multiple "
      f"of {multiple} (the network's size multiple), since the default "
      f"{tuple(default)} is larger than the cases"
    )
  return patch, reason


# ===========================================================================
# Fingerprint.
# ===========================================================================

FINGERPRINT_FILE = "fingerprint.json"
PLAN_FILE = "plan.json"
CONFIG_FILE = "config.json"
DATA_DIR = "data"
DEFAULT_OUTPUT = "medseg_plan"  # Under the folder, for --folder.
PLAN_FORMAT = 1

# Foreground voxels sampled per case and channel for the intensity
# statistics (nnU-Net samples 10 000 as well).
VOXELS_PER_CASE = 10_000
PERCENTILES = (0.5, 50.0, 99.5)
# Spacing ratio above which a dataset counts as anisotropic (nnU-Net: 3).
ANISOTROPY_THRESHOLD = 3.0


class PlanError(ValueError):
  """A plan file that cannot be trained: the message names the field."""


def _percentile_key(q: float) -> str:
  return f"p{q:g}".replace(".", "_")


def fingerprint_examples(
  examples: Iterable[tuple[str, str, dict[str, Any]]],
  *,
  channel_names: Sequence[str],
  class_names: Sequence[str],
  seed: int = 0,
) -> dict[str, Any]:
  """Statistics over `(case_id, split, example)` triples.

  Each example has `image: f32[*S, C]`, `label: int[*S]` and
  `spacing: f32[len(S)]`.
  """
  rng = np.random.default_rng(seed)
  cases = []
  samples = [[] for _ in channel_names]
  class_voxels = np.zeros(len(class_names), np.int64)
  class_cases = np.zeros(len(class_names), np.int64)
  for case_id, split, example in examples:
    image = np.asarray(example["image"], np.float32)
    label = np.asarray(example["label"])
    spacing = np.asarray(
      example.get("spacing", np.ones(label.ndim)), np.float64
    ).reshape(-1)[: label.ndim]
    if image.shape[-1] != len(channel_names):
      raise ValueError(
        f"Case {case_id!r} has {image.shape[-1]} channels; the dataset "
        f"declares {len(channel_names)} ({list(channel_names)})."
      )
    counts = np.bincount(label.reshape(-1), minlength=len(class_names))
    class_voxels += counts[: len(class_names)]
    class_cases += counts[: len(class_names)] > 0
    foreground = label > 0
    if not foreground.any():  # No foreground: the whole case stands in.
      foreground = np.ones_like(foreground)
    values = image[foreground]  # [N, C]
    take = rng.choice(
      len(values), min(len(values), VOXELS_PER_CASE), replace=False
    )
    for c in range(len(channel_names)):
      samples[c].append(values[take, c])
    cases.append(
      dict(
        case_id=case_id,
        split=split,
        shape=[int(s) for s in label.shape],
        spacing=[float(s) for s in spacing],
      )
    )
  if not cases:
    raise ValueError("The dataset has no training cases to fingerprint.")
  shapes = np.array([c["shape"] for c in cases], np.float64)
  spacings = np.array([c["spacing"] for c in cases], np.float64)
  median_spacing = np.median(spacings, axis=0)
  intensity = []
  for name, parts in zip(channel_names, samples, strict=True):
    values = np.concatenate(parts).astype(np.float64)
    entry = dict(channel=name)
    quantiles = np.percentile(values, PERCENTILES)
    for q, v in zip(PERCENTILES, quantiles, strict=True):
      entry[_percentile_key(q)] = float(v)
    entry.update(
      mean=float(values.mean()),
      std=float(values.std()),
      min=float(values.min()),
      max=float(values.max()),
    )
    intensity.append(entry)
  total = max(int(class_voxels.sum()), 1)
  return dict(
    num_cases=len(cases),
    cases=cases,
    median_shape=[float(v) for v in np.median(shapes, axis=0)],
    median_spacing=[float(v) for v in median_spacing],
    spacing_anisotropy=float(median_spacing.max() / median_spacing.min()),
    foreground_intensity=intensity,
    class_frequencies=[
      dict(
        name=name,
        voxel_fraction=float(class_voxels[i] / total),
        case_fraction=float(class_cases[i] / len(cases)),
      )
      for i, name in enumerate(class_names)
    ],
  )


def _pool_splits(splits: Sequence[str]) -> list[str]:
  """The labelled splits that plans train and cross-validate on."""
  pool = [s for s in ("train", "validation") if s in splits]
  if not pool:
    raise ValueError(
      f"No 'train' split to plan from; the dataset has {list(splits)}."
    )
  return pool


def fingerprint_folder(folder: str | os.PathLike[str]) -> dict[str, Any]:
  """The fingerprint of a `from_folder` data folder, read from its files.

  The cases are read as the builder reads them (canonical orientation,
  `label_map`, `crop_foreground`), at their own spacing and without
  intensity normalisation, so the statistics are those of the raw data.
  The `test` split is left out.
  """
  from medseg_jax.data import medical_builder  # noqa: PLC0415
  from medseg_jax.data.from_folder import from_folder  # noqa: PLC0415

  dataset = from_folder.load_dataset_json(folder)
  cases = {c.case_id: c for c in from_folder.find_cases(dataset)}
  splits = from_folder.split_case_ids(dataset, list(cases))
  pool = _pool_splits(list(splits))
  raw = dataset.preprocessing()
  raw = type(raw)(
    canonical=raw.canonical,
    spacing=None,
    image_order=raw.image_order,
    normalization=("none",),
    crop_foreground=raw.crop_foreground,
  )

  def examples():
    for split in pool:
      for case_id in splits[split]:
        example = medical_builder.make_example(
          cases[case_id],
          num_classes=dataset.num_classes,
          spatial_dims=dataset.spatial_dims,
          channel_names=dataset.channel_names,
          preprocess=raw,
          label_map=dataset.label_map,
        )
        yield case_id, split, example

  modalities = list(dataset.normalization)
  if len(modalities) == 1:
    modalities *= len(dataset.channel_names)
  out = dict(
    source=dict(
      kind="folder",
      folder=str(pathlib.Path(folder).resolve()),
      name=dataset.name,
      splits={k: len(v) for k, v in splits.items()},
      pool=pool,
    ),
    spatial_dims=dataset.spatial_dims,
    channel_names=list(dataset.channel_names),
    class_names=list(dataset.class_names),
    modalities=modalities,
    stored_normalization="none",
  )
  out.update(
    fingerprint_examples(
      examples(),
      channel_names=dataset.channel_names,
      class_names=dataset.class_names,
    )
  )
  return out


def fingerprint_dataset(
  name: str, data_dir: str, manual_dir: str | None = None
) -> dict[str, Any]:
  """The fingerprint of a registered dataset, read from its stored splits.

  The dataset is built first if needed. Its cases are as the builder
  stored them: some builders resample and normalise at build time (the
  fingerprint records which, as `stored_normalization`).
  """
  from medseg_jax.data import registry  # noqa: PLC0415

  spec = registry.get_dataset_spec(name, manual_dir)
  registry.prepare(name, data_dir, manual_dir)
  pool = _pool_splits(spec.splits)
  preprocessing = registry.input_preprocessing(name, data_dir, manual_dir)
  stored = "none"
  if preprocessing is not None:
    modes = set(preprocessing.normalization) - {"none"}
    stored = ",".join(sorted(modes)) or "none"

  def examples():
    for split in pool:
      source = registry.data_source(name, split, data_dir, manual_dir)
      for index in range(len(source)):
        example = source[index]
        case_id = example.get("case_id", str(index))
        if isinstance(case_id, bytes):
          case_id = case_id.decode()
        yield str(case_id), split, example

  sizes = {
    split: len(registry.data_source(name, split, data_dir, manual_dir))
    for split in spec.splits
  }
  out = dict(
    source=dict(
      kind="dataset",
      name=name,
      manual_dir=str(manual_dir or ""),
      splits=sizes,
      pool=pool,
    ),
    spatial_dims=spec.spatial_dims,
    channel_names=[f"channel{i}" for i in range(spec.num_channels)],
    class_names=list(spec.class_names),
    modalities=["stored"] * spec.num_channels,
    stored_normalization=stored,
  )
  out.update(
    fingerprint_examples(
      examples(),
      channel_names=out["channel_names"],
      class_names=spec.class_names,
    )
  )
  return out


# ===========================================================================
# Planning rules.
# ===========================================================================

# Smallest feature map of the bottleneck, per axis (nnU-Net: 4).
MIN_BOTTLENECK = 4
MAX_LEVELS = {2: 7, 3: 6}
MAX_FEATURES = {2: 512, 3: 320}  # nnU-Net's caps.
MIN_BATCH = 2
# Smallest patch axis the memory fit may shrink to (voxels).
MIN_PATCH = 8
# A batch covers at most this share of the training voxels (nnU-Net: 5 %).
MAX_BATCH_SHARE = 0.05
# Smallest patch axis the batch-share rule may shrink to (voxels).
SHARE_MIN_PATCH = 32
MAX_BATCH = 64
# Default budget: nnU-Net's reference GPU memory.
DEFAULT_MEMORY_GB = 8.0
# Step budget: passes over the training voxels, and bounds.
DEFAULT_COVERAGE = 50.0
MIN_STEPS, MAX_STEPS = 250, 250_000
DEFAULT_FOLDS = 5


def target_spacing(fingerprint: dict[str, Any]) -> tuple[list[float], str]:
  """The median spacing; an anisotropic axis gets its 10th percentile.

  nnU-Net's rule: with spacings that differ by more than
  `ANISOTROPY_THRESHOLD` between axes, resampling the coarse axis to the
  median would interpolate most voxels of the finely sampled cases, so it
  takes the 10th percentile of that axis instead (a finer target).
  """
  spacings = np.array([c["spacing"] for c in fingerprint["cases"]], float)
  median = np.median(spacings, axis=0)
  target = median.copy()
  ratio = float(median.max() / median.min())
  if ratio > ANISOTROPY_THRESHOLD:
    axis = int(np.argmax(median))
    target[axis] = float(np.percentile(spacings[:, axis], 10))
    reason = (
      f"the median spacing {_fmt(median)} mm, except axis {axis}: the "
      f"spacing is anisotropic ({ratio:.1f} > {ANISOTROPY_THRESHOLD:g} "
      f"between axes), so that axis takes the 10th percentile of its "
      f"spacings, {target[axis]:.4g} mm (nnU-Net's rule)"
    )
  else:
    reason = (
      f"the median spacing of the training cases (anisotropy "
      f"{ratio:.2f} <= {ANISOTROPY_THRESHOLD:g}, no special axis)"
    )
  if np.allclose(spacings, target[None], rtol=1e-3):
    reason += "; every case is at this spacing already, none is resampled"
  return [float(v) for v in target], reason


def _fmt(values: Iterable[float]) -> str:
  return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def normalization(fingerprint: dict[str, Any]) -> tuple[dict[str, Any], str]:
  """CT channels: clip to foreground percentiles, then a dataset z-score;
  others: a z-score per case. The value is a `normalize` transform spec."""
  modalities = fingerprint["modalities"]
  stored = fingerprint.get("stored_normalization", "none")
  if stored != "none":
    return dict(op="normalize", mode="none"), (
      f"the dataset's builder normalises at build time ({stored}), so the "
      "stored images are used as they are"
    )
  stats = fingerprint["foreground_intensity"]
  ct = [m == "ct" for m in modalities]
  if not any(ct):
    return dict(op="normalize", mode="zscore"), (
      "no CT channel: a z-score per case and channel (intensities of MRI, "
      "microscopy and photographs carry no absolute meaning)"
    )
  low, high, mean, std = [], [], [], []
  for is_ct, entry in zip(ct, stats, strict=True):
    if is_ct:
      lo, hi = entry[_percentile_key(0.5)], entry[_percentile_key(99.5)]
      low.append(lo)
      high.append(hi)
    else:
      low.append(None)
      high.append(None)
    mean.append(entry["mean"])
    std.append(max(entry["std"], 1e-6))
  spec = dict(
    op="normalize", mode="fixed", low=low, high=high, mean=mean, std=std
  )
  reason = (
    "CT channel(s) "
    + ", ".join(
      n for n, c in zip(fingerprint["channel_names"], ct, strict=True) if c
    )
    + ": Hounsfield units mean the same in every scan, so they are clipped "
    "to the 0.5 and 99.5 percentiles of the foreground intensities and "
    "z-scored with the foreground mean and std of the whole dataset "
    "(nnU-Net's CT scheme)"
  )
  if not all(ct):
    reason += "; the other channels are z-scored with dataset statistics too"
  return spec, reason


def levels_for(patch: Sequence[int], dims: int) -> int:
  """U-Net levels for a patch: pool while every axis stays >= 4 voxels."""
  poolings = min(
    int(math.floor(math.log2(max(p, 1) / MIN_BOTTLENECK))) for p in patch
  )
  return int(np.clip(poolings + 1, 2, MAX_LEVELS[dims]))


def features_for(levels: int, dims: int, base: int) -> list[int]:
  """Widths doubling per level from `base`, capped as nnU-Net caps them."""
  return [min(base * 2**k, MAX_FEATURES[dims]) for k in range(levels)]


def _round_patch(patch: Sequence[float], dims: int) -> list[int]:
  """A patch whose axes are multiples of its own network's pooling."""
  patch = [max(int(p), 2**1) for p in patch]
  for _ in range(4):  # Rounding down can lower the level count; settle it.
    multiple = 2 ** (levels_for(patch, dims) - 1)
    patch = [max(multiple, (p // multiple) * multiple) for p in patch]
  return patch


def initial_patch(
  fingerprint: dict[str, Any], spacing: Sequence[float], max_voxels: int
) -> tuple[list[float], list[float]]:
  """The median case shape at the target spacing, capped in voxels.

  Returns `(patch, median_shape_at_target)`.
  """
  shapes = np.array([c["shape"] for c in fingerprint["cases"]], float)
  spacings = np.array([c["spacing"] for c in fingerprint["cases"]], float)
  resampled = shapes * spacings / np.asarray(spacing, float)[None]
  median = np.median(resampled, axis=0)
  patch = median.copy()
  # Cap the volume, shrinking the axes that are largest in mm first.
  while np.prod(patch) > max_voxels:
    mm = patch * np.asarray(spacing)
    axis = int(np.argmax(mm))
    patch[axis] *= 0.9
  return list(patch), [float(v) for v in median]


def augmentations(
  dims: int, spacing: Sequence[float], anisotropic: bool
) -> tuple[list[dict[str, Any]], str]:
  """nnU-Net's default augmentation list, as `config.augment` entries."""
  ops: list[dict[str, Any]] = []
  if dims == 2:
    rotation = [[-180.0, 180.0]]
    where = "rotation of up to 180 degrees"
  elif anisotropic:
    coarse = int(np.argmax(spacing))
    rotation = [[0.0, 0.0]] * 3
    rotation[coarse] = [-180.0, 180.0]
    where = (
      f"rotation only about the coarse axis {coarse} (in-plane), since "
      "out-of-plane rotations would mix thick slices"
    )
  else:
    rotation = [[-30.0, 30.0]] * 3
    where = "rotations of up to 30 degrees about each axis"
  ops.append(dict(op="affine", p=0.2, rotation=rotation, scale=[0.7, 1.4]))
  ops += [
    dict(op="noise", p=0.1, sigma=[0.0, 0.1]),
    dict(op="blur", p=0.2, sigma=[0.5, 1.0]),
    dict(op="brightness", p=0.15, factor=[0.75, 1.25]),
    dict(op="contrast", p=0.15, factor=[0.75, 1.25]),
    dict(op="low_resolution", p=0.25, factor=[1.0, 2.0]),
    dict(op="gamma", p=0.1, gamma=[0.7, 1.5], invert=True),
    dict(op="gamma", p=0.3, gamma=[0.7, 1.5]),
    dict(op="flip", axis_p=0.5),
  ]
  reason = (
    f"nnU-Net's default list: {where}, scaling 0.7-1.4, noise, blur, "
    "brightness, contrast, simulated low resolution, gamma (also inverted) "
    "and mirroring of every axis; probabilities as nnU-Net's"
  )
  return ops, reason


def foreground_share(fingerprint: dict[str, Any]) -> tuple[float, str]:
  """33 % of patches centred on foreground; 50 % for tiny structures."""
  classes = fingerprint["class_frequencies"][1:]
  smallest = min((c["voxel_fraction"] for c in classes), default=0.0)
  if smallest < 0.001:
    return 0.5, (
      f"the rarest class covers {100 * smallest:.3g} % of the voxels "
      "(< 0.1 %), so half of the patches are centred on a foreground voxel "
      "instead of nnU-Net's third"
    )
  return 0.33, (
    f"nnU-Net's third of the patches centred on a foreground voxel (the "
    f"rarest class covers {100 * smallest:.3g} % of the voxels)"
  )


# ===========================================================================
# Memory: the compiled train step.
# ===========================================================================


def compile_train_step(
  config: Any, spec: Any, *, compile: bool = True
) -> dict[str, Any]:
  """The trainer's own train step of `config`, compiled for one device.

  The step (`train._train_step`: forward, loss with deep supervision,
  backward, optimiser update, on-device augmentation) is lowered for
  `config.batch_size` patches of `config.data.patch_size` and compiled for
  the default device; nothing is allocated.

  Returns:
    A dict: ``lowered`` (its `cost_analysis()` counts the FLOPs of the
    program before XLA's CPU rewrites hide convolutions in library calls),
    ``compiled`` (called as ``compiled(state, batch, key)``; the state is
    donated; None with ``compile=False``), ``init_state`` (jittable,
    ``key -> state``) and ``batch`` (a `jax.ShapeDtypeStruct` per batch
    field).
  """
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from medseg_jax import augment as augment_lib  # noqa: PLC0415
  from medseg_jax import losses as losses_lib  # noqa: PLC0415
  from medseg_jax import models as models_lib  # noqa: PLC0415
  from medseg_jax import optimizers  # noqa: PLC0415
  from medseg_jax import sharding  # noqa: PLC0415
  from medseg_jax import train  # noqa: PLC0415  (train imports plan)

  model = models_lib.from_config(config, spec)
  loss_fn = losses_lib.from_config(
    config.loss, num_classes=spec.num_classes, spatial_dims=spec.spatial_dims
  )
  tx, schedule = optimizers.create(config.optimizer, config.num_train_steps)
  patch = tuple(int(p) for p in config.data.patch_size)
  specs = list(config.get("augment", None) or [])
  augment = augment_lib.build(specs, spatial_shape=patch) if specs else None
  channels = spec.num_channels

  def init_state(key):
    sample = jnp.zeros((1, *patch, channels), jnp.float32)
    variables = model.init(key, sample, train=False)
    return train.TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      tx=tx,
      batch_stats=variables.get("batch_stats", {}),
    )

  mesh = sharding.make_mesh(jax.devices()[:1], config.get("mesh", None))
  key = jax.random.key(0)
  batch = config.batch_size
  shapes = dict(
    image=jax.ShapeDtypeStruct((batch, *patch, channels), jnp.float32),
    label=jax.ShapeDtypeStruct((batch, *patch), jnp.int32),
    mask=jax.ShapeDtypeStruct((batch, *patch), jnp.float32),
  )
  for name in loss_fn.inputs:  # e.g. the boundary loss's distance maps.
    shapes[name] = jax.ShapeDtypeStruct(
      (batch, *patch, spec.num_classes), jnp.float32
    )
  with jax.set_mesh(mesh):
    state = jax.eval_shape(init_state, key)
    step = jax.jit(
      functools.partial(
        train._train_step,  # noqa: SLF001
        loss_fn=loss_fn,
        schedule=schedule,
        augment=augment,
      ),
      donate_argnums=(0,),
    )
    lowered = step.lower(state, shapes, key)
    compiled = lowered.compile() if compile else None
  return dict(
    lowered=lowered, compiled=compiled, init_state=init_state, batch=shapes
  )


def train_step_memory(config: Any, spec: Any) -> dict[str, int]:
  """Bytes the compiled train step of `config` needs on one device.

  `compile_train_step`'s program: `total` is its arguments (state and
  batch) plus outputs and temporaries, less the buffers the donated state
  shares with the new one.
  """
  stats = compile_train_step(config, spec)["compiled"].memory_analysis()
  total = (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )
  return dict(
    total=int(total),
    arguments=int(stats.argument_size_in_bytes),
    outputs=int(stats.output_size_in_bytes),
    temporaries=int(stats.temp_size_in_bytes),
    aliased=int(stats.alias_size_in_bytes),
  )


def _device_budget() -> int:
  """The default device's memory limit, 85 % of it (room for XLA)."""
  import jax  # noqa: PLC0415

  stats = jax.devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  if not limit:
    raise ValueError(
      f"The device {jax.devices()[0]} does not report its memory; give "
      "--memory_gb explicitly."
    )
  return int(0.85 * limit)


# ===========================================================================
# The plan, and the config it trains with.
# ===========================================================================

# Decisions, in the order a plan lists them; each is {"value", "reason"}.
DECISIONS = (
  "spatial_dims",
  "target_spacing",
  "normalization",
  "patch_size",
  "features",
  "deep_supervision",
  "batch_size",
  "memory",
  "foreground_share",
  "augment",
  "learning_rate",
  "num_train_steps",
  "num_folds",
)


def make_plan(
  fingerprint: dict[str, Any],
  *,
  memory_budget_bytes: int,
  base_features: int = 32,
  steps: int = 0,
  coverage: float = DEFAULT_COVERAGE,
  num_folds: int = DEFAULT_FOLDS,
  max_patch_voxels: int | None = None,
  data_folder: str | None = None,
  log: Any = None,
  measure_fn: Any = None,
) -> dict[str, Any]:
  """The plan for a fingerprinted dataset, fitted to a memory budget.

  Args:
    fingerprint: from `fingerprint_folder` or `fingerprint_dataset`.
    memory_budget_bytes: the compiled train step must need at most this.
    base_features: width of the first level (nnU-Net: 32).
    steps: the step budget; 0 chooses it from the data (`coverage`).
    coverage: with `steps=0`, passes of patches over the training voxels.
    num_folds: cross-validation folds (at most one per training case).
    max_patch_voxels: cap of the first patch tried; default 512^2 (2-D)
      or 128^3 (3-D), nnU-Net's ballpark.
    data_folder: for a folder dataset, the planned folder (see
      `write_plan`); the plan trains on it.
    log: optional `f(str)` for progress lines.
    measure_fn: `f(config, spec) -> {"total": bytes, ...}`; default
      `train_step_memory` (tests pass a cheap model of memory to check the
      search itself).

  Raises:
    ValueError: if even the smallest patch with batch 2 does not fit.
  """
  log = log or (lambda _: None)
  measure_fn = measure_fn or train_step_memory
  dims = int(fingerprint["spatial_dims"])
  decisions: dict[str, dict[str, Any]] = {}

  def decide(name, value, reason):
    decisions[name] = dict(value=value, reason=reason)

  decide(
    "spatial_dims",
    dims,
    f"the data are {dims}-D"
    + (
      "; volumes this anisotropic would also suit a 2-D network on slices "
      "(nnU-Net trains both), which this code does not plan"
      if dims == 3 and fingerprint["spacing_anisotropy"] > ANISOTROPY_THRESHOLD
      else ""
    ),
  )
  spacing, reason = target_spacing(fingerprint)
  if fingerprint["source"]["kind"] == "dataset":
    spacing = [float(v) for v in fingerprint["median_spacing"]]
    reason = (
      "registered datasets are trained at the spacing their builder "
      f"stores; median {_fmt(spacing)} mm (resampling is planned for "
      "folder datasets)"
    )
  decide("target_spacing", spacing, reason)
  decide("normalization", *normalization(fingerprint))
  anisotropic = dims == 3 and max(spacing) / min(spacing) > ANISOTROPY_THRESHOLD
  decide("augment", *augmentations(dims, spacing, anisotropic))
  decide("foreground_share", *foreground_share(fingerprint))
  decide(
    "deep_supervision",
    True,
    "nnU-Net's deep supervision: a loss at "
    "every decoder level but the coarsest, halving weights",
  )
  decide(
    "learning_rate",
    1e-3,
    "AdamW at 1e-3 with a cosine schedule, the "
    "rate of this code's hand-written U-Net configs",
  )
  pool_size = sum(
    fingerprint["source"]["splits"][s] for s in fingerprint["source"]["pool"]
  )
  folds = max(1, min(num_folds, pool_size))
  decide(
    "num_folds",
    folds,
    f"{num_folds} folds"
    + (
      f", capped at the {pool_size} training cases" if folds < num_folds else ""
    )
    + ": contiguous blocks of the training pool "
    + "+".join(fingerprint["source"]["pool"]),
  )
  decide("num_train_steps", 1, "placeholder until the patch is fitted")
  decide("features", [base_features], "placeholder")
  decide("patch_size", [1] * dims, "placeholder")
  decide("batch_size", MIN_BATCH, "placeholder")
  decide("memory", {}, "placeholder")

  # Patch and batch: shrink the patch until batch 2 fits, then grow the
  # batch; every candidate is compiled and measured.
  max_voxels = max_patch_voxels or (512**2 if dims == 2 else 128**3)
  patch_f, median = initial_patch(fingerprint, spacing, max_voxels)
  spec = _spec_of(fingerprint)
  budget = int(memory_budget_bytes)
  cases_voxels = float(sum(np.prod(c["shape"]) for c in fingerprint["cases"]))
  measured: dict[tuple, dict[str, int]] = {}

  def measure(patch, batch):
    key = (tuple(patch), batch)
    if key not in measured:
      levels = levels_for(patch, dims)
      decisions["patch_size"]["value"] = list(patch)
      decisions["features"]["value"] = features_for(levels, dims, base_features)
      decisions["deep_supervision"]["value"] = levels >= 3
      decisions["batch_size"]["value"] = batch
      plan = dict(
        format=PLAN_FORMAT,
        dataset=_dataset_entry(fingerprint, data_folder),
        decisions=decisions,
      )
      config = config_from_plan(plan, check=False)
      measured[key] = measure_fn(config, spec)
      log(
        f"  patch {list(patch)} batch {batch}: "
        f"{measured[key]['total'] / 2**20:.1f} MiB"
      )
    return measured[key]["total"]

  # No axis below MIN_PATCH voxels (or the median case, if smaller); the
  # share rule stops at SHARE_MIN_PATCH.
  lowest = [min(MIN_PATCH, max(2, int(m) // 2 * 2)) for m in median]
  share_lowest = [min(SHARE_MIN_PATCH, max(2, int(m) // 2 * 2)) for m in median]
  share_limit = MAX_BATCH_SHARE * cases_voxels
  patch = _round_patch(patch_f, dims)
  first_patch = list(patch)
  shrunk_for: set[str] = set()

  def overshoot(patch):
    """Factors by which batch 2 of `patch` exceeds memory and data share."""
    mem = measure(patch, MIN_BATCH) / budget
    share = MIN_BATCH * float(np.prod(patch)) / share_limit
    if share > 1 and np.all(np.asarray(patch) <= np.asarray(share_lowest)):
      share = 0.0  # As small as the share rule goes.
    return mem, share

  while True:
    mem, share = overshoot(patch)
    if max(mem, share) <= 1:
      break
    # Memory is about linear in voxels: shrink to the budget's share (the
    # data share exactly), the axes largest relative to the median case
    # shape first.
    target = np.inf
    if mem > 1:
      target = np.prod(patch) * max(min(0.9 / mem, 0.85), 0.1)
      shrunk_for.add("memory")
    floor = lowest
    if share > 1:
      target = min(target, np.prod(patch) * max(1.0 / share, 0.1))
      shrunk_for.add("share")
      if mem <= 1:
        floor = share_lowest
    patch_f = [float(p) for p in patch]
    while np.prod(patch_f) > target:
      room = np.asarray(patch_f) / np.asarray(median)
      room[np.asarray(patch_f) <= np.asarray(floor)] = -np.inf
      if not np.isfinite(room.max()):
        break
      axis = int(np.argmax(room))
      patch_f[axis] = max(patch_f[axis] * 0.95, floor[axis])
    new = _round_patch(patch_f, dims)
    if new == patch:  # Rounding undid the shrink: drop one multiple.
      step = 2 ** (levels_for(patch, dims) - 1)
      room = np.asarray(patch, float) / np.asarray(median)
      room[np.asarray(patch) - step < np.asarray(floor)] = -np.inf
      if np.isfinite(room.max()):
        new = list(patch)
        new[int(np.argmax(room))] -= step
        new = _round_patch(new, dims)
    if new == patch:
      if mem <= 1:
        break  # The share rule cannot shrink further; memory fits.
      raise ValueError(
        f"Even patch {patch} with batch {MIN_BATCH} needs "
        f"{measure(patch, MIN_BATCH) / 2**20:.2f} MiB, over the budget "
        f"of {budget / 2**20:.2f} MiB; raise --memory_gb or lower "
        "--base_features."
      )
    patch = new

  # Batch: linear in the batch from two measurements, capped at 5 % of the
  # training voxels; the chosen batch is measured too.
  fixed_2 = measure(patch, MIN_BATCH)
  per_example = max(measure(patch, MIN_BATCH + 2) - fixed_2, 1) / 2
  cap = max(
    MIN_BATCH,
    min(MAX_BATCH, int(MAX_BATCH_SHARE * cases_voxels / np.prod(patch))),
  )
  batch = int(min(cap, MIN_BATCH + (budget - fixed_2) // per_example))
  batch = max(batch, MIN_BATCH)
  while batch > MIN_BATCH and measure(patch, batch) > budget:
    batch -= max(1, int((measure(patch, batch) - budget) // per_example))
    batch = max(batch, MIN_BATCH)
  levels = levels_for(patch, dims)
  features = features_for(levels, dims, base_features)
  total = measure(patch, batch)
  share_now = MIN_BATCH * float(np.prod(patch)) / cases_voxels
  decisions["patch_size"] = dict(
    value=list(patch),
    reason=(
      f"the median case shape at the target spacing, {_fmt(median)}, "
      f"capped at {max_voxels} voxels"
      + (
        f", shrunk from {first_patch} (largest axes relative to the median "
        "first) until "
        + " and ".join(
          why
          for key, why in (
            (
              "memory",
              f"the train step with batch {MIN_BATCH} fits the memory budget",
            ),
            (
              "share",
              f"a batch of {MIN_BATCH} covers at most "
              f"{100 * MAX_BATCH_SHARE:g} % of the training voxels (so that "
              "a batch is a sample of the data, not all of it, and foreground "
              "oversampling changes what a patch holds; no axis below "
              f"{SHARE_MIN_PATCH} voxels for this rule)",
            ),
          )
          if key in shrunk_for
        )
        if list(patch) != first_patch
        else f"; with batch {MIN_BATCH} it fits the memory budget as it is"
      )
      + (
        f"; a batch of {MIN_BATCH} covers {100 * share_now:.3g} % of the "
        f"training voxels (over {100 * MAX_BATCH_SHARE:g} %: the share rule "
        f"stops at {SHARE_MIN_PATCH} voxels an axis or the median case)"
        if share_now > MAX_BATCH_SHARE
        else ""
      )
      + f"; each axis a multiple of {2 ** (levels - 1)} (the network's "
      "pooling)"
    ),
  )
  decisions["features"] = dict(
    value=features,
    reason=(
      f"{levels} levels: pooling until the smallest patch axis is "
      f"{MIN_BOTTLENECK} voxels at the bottleneck (at most "
      f"{MAX_LEVELS[dims]}); widths double from {base_features} and are "
      f"capped at {MAX_FEATURES[dims]} (nnU-Net's layout)"
    ),
  )
  decisions["deep_supervision"] = dict(
    value=levels >= 3,
    reason=(
      "nnU-Net's deep supervision: a loss at every decoder level but the "
      "coarsest, with halving weights"
      if levels >= 3
      else f"off: {levels} levels leave no decoder level to supervise"
    ),
  )
  decisions["batch_size"] = dict(
    value=batch,
    reason=(
      f"the largest batch whose compiled train step fits the budget "
      f"({per_example / 2**20:.1f} MiB per example), at most {cap} "
      f"(patches covering {100 * MAX_BATCH_SHARE:g} % of the training "
      f"voxels, or {MAX_BATCH}) and at least {MIN_BATCH}"
    ),
  )
  import jax  # noqa: PLC0415

  decisions["memory"] = dict(
    value=dict(
      budget_bytes=budget,
      train_step_bytes=int(total),
      device=str(jax.devices()[0].device_kind),
      platform=jax.default_backend(),
    ),
    reason=(
      "compiled memory analysis of the train step "
      "(jax.jit(...).lower(...).compile().memory_analysis(): arguments + "
      "outputs + temporaries - donated) on this device; "
      f"{len(measured)} candidates measured"
    ),
  )
  patch_voxels = float(np.prod(patch))
  train_voxels = (
    cases_voxels * (folds - 1) / folds if folds > 1 else (cases_voxels)
  )
  if steps:
    decide("num_train_steps", int(steps), "given with --steps")
  else:
    chosen = coverage * train_voxels / (batch * patch_voxels)
    chosen = int(np.clip(round(chosen), MIN_STEPS, MAX_STEPS))
    decide(
      "num_train_steps",
      chosen,
      f"patches covering the training voxels {coverage:g} times, within "
      f"[{MIN_STEPS}, {MAX_STEPS}] (nnU-Net: 250 000 steps); set --steps "
      "for a fixed budget",
    )
  ordered = {name: decisions[name] for name in DECISIONS}
  return dict(
    format=PLAN_FORMAT,
    dataset=_dataset_entry(fingerprint, data_folder),
    fingerprint=FINGERPRINT_FILE,
    decisions=ordered,
  )


def _dataset_entry(
  fingerprint: dict[str, Any], data_folder: str | None
) -> dict[str, Any]:
  source = fingerprint["source"]
  entry = dict(
    kind=source["kind"],
    name=source["name"],
    pool=list(source["pool"]),
    splits=dict(source["splits"]),
    class_names=list(fingerprint["class_names"]),
    channel_names=list(fingerprint["channel_names"]),
    median_shape=list(fingerprint["median_shape"]),
  )
  if source["kind"] == "folder":
    entry["folder"] = source["folder"]
    entry["data_folder"] = data_folder or ""
  else:
    entry["manual_dir"] = source.get("manual_dir", "")
  return entry


def _spec_of(fingerprint: dict[str, Any]) -> Any:
  from medseg_jax.data.spec import DatasetSpec  # noqa: PLC0415

  return DatasetSpec(
    tfds_name="planned",
    num_classes=len(fingerprint["class_names"]),
    class_names=tuple(fingerprint["class_names"]),
    spatial_dims=int(fingerprint["spatial_dims"]),
    num_channels=len(fingerprint["channel_names"]),
    splits=tuple(fingerprint["source"]["splits"]),
    needs_manual_dir=False,
  )


# ---------------------------------------------------------------- checking


def _fail(where: str, name: str, problem: str) -> PlanError:
  return PlanError(f"{where}: decisions.{name} {problem}")


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return (
    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
  )


def check_plan(plan: Any, where: str = PLAN_FILE) -> None:
  """Raises `PlanError` naming the first bad field of a plan.

  Checks the layout (format, dataset, every decision present, no unknown
  one, each a `{"value", "reason"}` pair) and each value: its type, its
  range, and that the patch is a multiple of the network's pooling and the
  augmentations build for it.
  """
  if not isinstance(plan, dict):
    raise PlanError(f"{where}: expected a JSON object.")
  if plan.get("format") != PLAN_FORMAT:
    raise PlanError(
      f"{where}: format is {plan.get('format')!r}; this code reads format "
      f"{PLAN_FORMAT}."
    )
  dataset = plan.get("dataset")
  if not isinstance(dataset, dict) or dataset.get("kind") not in (
    "folder",
    "dataset",
  ):
    raise PlanError(
      f"{where}: dataset must be an object with kind 'folder' or 'dataset'."
    )
  for key in ("name", "pool", "splits", "class_names", "channel_names"):
    if key not in dataset:
      raise PlanError(f"{where}: dataset.{key} is missing.")
  decisions = plan.get("decisions")
  if not isinstance(decisions, dict):
    raise PlanError(f"{where}: decisions must be an object.")
  unknown = sorted(set(decisions) - set(DECISIONS))
  if unknown:
    raise PlanError(
      f"{where}: unknown decision(s) {', '.join(unknown)}; valid: "
      f"{', '.join(DECISIONS)}."
    )
  missing = [d for d in DECISIONS if d not in decisions]
  if missing:
    raise PlanError(
      f"{where}: decision(s) {', '.join(missing)} missing; a plan lists "
      f"all of {', '.join(DECISIONS)}."
    )
  for name in DECISIONS:
    entry = decisions[name]
    if not isinstance(entry, dict) or "value" not in entry:
      raise _fail(where, name, 'must be {"value": ..., "reason": "..."}.')
  v = {name: decisions[name]["value"] for name in DECISIONS}
  dims = v["spatial_dims"]
  if dims not in (2, 3) or not _is_int(dims):
    raise _fail(where, "spatial_dims", f"is {dims!r}; expected 2 or 3.")
  spacing = v["target_spacing"]
  if not (
    isinstance(spacing, list)
    and len(spacing) == dims
    and all(_is_number(s) and s > 0 for s in spacing)
  ):
    raise _fail(
      where,
      "target_spacing",
      f"is {spacing!r}; expected {dims} positive numbers (mm).",
    )
  _check_normalization(v["normalization"], len(dataset["channel_names"]), where)
  features = v["features"]
  if not (
    isinstance(features, list)
    and len(features) >= 2
    and all(_is_int(f) and f > 0 for f in features)
  ):
    raise _fail(
      where,
      "features",
      f"is {features!r}; expected at least 2 positive integers (widths "
      "per level, finest first).",
    )
  if not isinstance(v["deep_supervision"], bool):
    raise _fail(where, "deep_supervision", "must be true or false.")
  if v["deep_supervision"] and len(features) < 3:
    raise _fail(
      where, "deep_supervision", "needs at least 3 levels in features."
    )
  patch = v["patch_size"]
  multiple = 2 ** (len(features) - 1)
  if not (
    isinstance(patch, list)
    and len(patch) == dims
    and all(_is_int(p) and p > 0 and p % multiple == 0 for p in patch)
  ):
    raise _fail(
      where,
      "patch_size",
      f"is {patch!r}; expected {dims} positive multiples of {multiple} "
      f"(2 ** (levels - 1) for the {len(features)} levels of features).",
    )
  for name, low in (
    ("batch_size", 1),
    ("num_train_steps", 1),
    ("num_folds", 1),
  ):
    if not _is_int(v[name]) or v[name] < low:
      raise _fail(where, name, f"is {v[name]!r}; expected an integer >= {low}.")
  share = v["foreground_share"]
  if not _is_number(share) or not 0 <= share <= 1:
    raise _fail(
      where, "foreground_share", f"is {share!r}; expected a number in [0, 1]."
    )
  rate = v["learning_rate"]
  if not _is_number(rate) or rate <= 0:
    raise _fail(
      where, "learning_rate", f"is {rate!r}; expected a positive number."
    )
  if not isinstance(v["augment"], list) or not all(
    isinstance(a, dict) for a in v["augment"]
  ):
    raise _fail(where, "augment", 'must be a list of {"op": ...} objects.')
  from medseg_jax import augment as augment_lib  # noqa: PLC0415

  try:
    augment_lib.build(v["augment"], spatial_shape=tuple(patch))
  except ValueError as e:
    raise _fail(where, "augment", f"does not build: {e}") from None


def _check_normalization(value: Any, channels: int, where: str) -> None:
  from medseg_jax.data import transforms  # noqa: PLC0415

  if not isinstance(value, dict) or value.get("op") != "normalize":
    raise _fail(
      where,
      "normalization",
      f"is {value!r}; expected a normalize spec such as "
      '{"op": "normalize", "mode": "zscore"}.',
    )
  try:
    normalize = transforms.build([value])[0]
  except (TypeError, ValueError) as e:
    raise _fail(
      where,
      "normalization",
      f"is not a valid normalize spec ({e}); modes: "
      f"{', '.join(transforms.NORMALIZE_MODES)}.",
    ) from None
  if normalize.mode == "fixed" and len(normalize.mean) != channels:
    raise _fail(
      where,
      "normalization",
      f"has statistics for {len(normalize.mean)} channel(s); the dataset "
      f"has {channels}.",
    )


def load_plan(path: str | os.PathLike[str]) -> dict[str, Any]:
  """Reads and checks a plan file (or the `plan.json` of a directory).

  Raises:
    FileNotFoundError: if there is no plan there.
    PlanError: for invalid JSON or a bad field (named in the message).
  """
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / PLAN_FILE
  if not path.is_file():
    raise FileNotFoundError(
      f"No plan at {path}; make one with python -m medseg_jax.plan "
      "--folder=DIR (or --dataset=NAME --output=DIR)."
    )
  try:
    plan = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise PlanError(f"{path}: not valid JSON ({e}).") from None
  check_plan(plan, str(path))
  plan["_path"] = str(path.resolve())
  return plan


# ---------------------------------------------------------------- to config


def fold_splits(
  pool: Sequence[str], sizes: dict[str, int], fold: int, num_folds: int
) -> tuple[str, str]:
  """`(train_split, held_out_split)` of fold `fold` of `num_folds`.

  The pool's splits are concatenated in order and cut into `num_folds`
  contiguous blocks (sizes differing by at most one); fold `k` holds out
  block `k`. Contiguous, because neighbouring cases are often related
  (slices of one stack, scans of one site). TFDS split strings, e.g.
  `("train[:6]+train[12:]+validation", "train[6:12]")`.
  """
  if not 0 <= fold < num_folds:
    raise ValueError(f"fold must be in [0, {num_folds}); got {fold}.")
  total = sum(sizes[s] for s in pool)
  if num_folds > total:
    raise ValueError(f"{num_folds} folds need {num_folds} cases; {total}.")
  bounds = np.linspace(0, total, num_folds + 1).round().astype(int)
  start, stop = int(bounds[fold]), int(bounds[fold + 1])
  held, rest = [], []
  offset = 0
  for split in pool:
    n = sizes[split]
    a, b = max(start - offset, 0), min(stop - offset, n)

    def piece(lo, hi, split=split, n=n):
      if lo >= hi:
        return None
      if lo == 0 and hi == n:
        return split
      return f"{split}[{lo}:{hi}]"

    if a < b:
      held.append(piece(a, b))
      rest += [piece(0, a), piece(b, n)]
    else:
      rest.append(piece(0, n))
    offset += n
  return (
    "+".join(p for p in rest if p),
    "+".join(p for p in held if p),
  )


def config_from_plan(
  plan: dict[str, Any], *, fold: int = -1, check: bool = True
) -> Any:
  """The training config a plan describes (`configs/auto.py` calls this).

  Args:
    plan: a plan (from `load_plan` or `make_plan`).
    fold: -1 trains on the `train` split and validates on `validation`
      (or `train`); `k` trains on every block of the pool but the `k`-th
      and validates and tests on that one (see `fold_splits`).
    check: check the plan first (`check_plan`).
  """
  from configs import common  # noqa: PLC0415

  if check:
    check_plan(plan, plan.get("_path", PLAN_FILE))
  v = {name: entry["value"] for name, entry in plan["decisions"].items()}
  dataset = plan["dataset"]
  config = common.base_config()
  if dataset["kind"] == "folder":
    from medseg_jax.data import registry  # noqa: PLC0415

    config.dataset = registry.FROM_FOLDER
    config.manual_dir = dataset.get("data_folder") or dataset["folder"]
  else:
    config.dataset = dataset["name"]
    config.manual_dir = dataset.get("manual_dir", "")
  splits = dataset["splits"]
  if fold >= 0:
    if fold >= v["num_folds"]:
      raise ValueError(
        f"fold={fold}, but the plan has num_folds={v['num_folds']}."
      )
    train_split, held_out = fold_splits(
      dataset["pool"], splits, fold, v["num_folds"]
    )
    config.train_split = train_split
    config.eval_split = held_out
    config.test_split = held_out
  else:
    config.train_split = "train"
    config.eval_split = "validation" if "validation" in splits else "train"
    config.test_split = "test" if "test" in splits else config.eval_split
  config.data.patch_size = tuple(v["patch_size"])
  config.data.train_transforms = [
    dict(v["normalization"]),
    dict(op="random_crop_or_pad", foreground_share=v["foreground_share"]),
  ]
  config.augment = [dict(a) for a in v["augment"]]
  config.model.name = "unet"
  config.model.features = tuple(v["features"])
  config.model.deep_supervision = bool(v["deep_supervision"])
  config.batch_size = int(v["batch_size"])
  config.num_train_steps = int(v["num_train_steps"])
  config.optimizer.learning_rate = float(v["learning_rate"])
  config.optimizer.warmup_steps = min(50, max(config.num_train_steps // 10, 1))
  every = max(config.num_train_steps // 5, 1)
  config.eval_every_steps = every
  config.checkpoint_every_steps = every
  config.log_every_steps = min(50, every)
  # Cases larger than the patch are predicted window by window, as trained.
  median = dataset.get("median_shape") or config.data.patch_size
  config.eval.sliding_window = any(
    m > p for m, p in zip(median, v["patch_size"], strict=True)
  )
  config.eval.sw_batch_size = max(1, min(4, config.batch_size))
  config.plan = plan.get("_path", "")
  return config


# ---------------------------------------------------------------- writing


def planned_data_folder(
  plan_dir: pathlib.Path, folder: pathlib.Path, spacing: Sequence[float]
) -> pathlib.Path:
  """Writes `plan_dir/data`: the folder's cases under a planned JSON.

  `images/` and `labels/` link to the folder's; `dataset.json` is the
  folder's with the planned `spacing` and `normalization: none` (the
  input pipeline normalises, as the plan says), under a name that changes
  with those settings so an edited plan builds its own dataset.
  """
  from medseg_jax.data.from_folder import from_folder  # noqa: PLC0415

  folder = pathlib.Path(folder).resolve()
  raw = json.loads((folder / from_folder.DATASET_JSON).read_text())
  raw["spacing"] = [float(s) for s in spacing]
  raw["normalization"] = "none"
  raw.pop("ct_window", None)
  digest = hashlib.sha1(
    json.dumps(
      {k: v for k, v in raw.items() if k != "name"}, sort_keys=True
    ).encode()
  ).hexdigest()[:8]
  raw["name"] = f"{raw['name']}_plan{digest}"
  data = plan_dir / DATA_DIR
  data.mkdir(parents=True, exist_ok=True)
  for sub in (from_folder.IMAGES_DIR, from_folder.LABELS_DIR):
    link = data / sub
    if link.is_symlink() or link.exists():
      if link.resolve() == (folder / sub).resolve():
        continue
      link.unlink()
    link.symlink_to(folder / sub, target_is_directory=True)
  target = data / from_folder.DATASET_JSON
  text = json.dumps(raw, indent=2) + "\n"
  if not target.is_file() or target.read_text() != text:
    target.write_text(text)
  return data


def sync_data_folder(plan: dict[str, Any]) -> None:
  """Rewrites a folder plan's `data/dataset.json` for its target spacing
  (an edited plan then trains at the spacing it now says)."""
  dataset = plan["dataset"]
  if dataset["kind"] != "folder" or not dataset.get("data_folder"):
    return
  data = pathlib.Path(dataset["data_folder"])
  planned_data_folder(
    data.parent,
    pathlib.Path(dataset["folder"]),
    plan["decisions"]["target_spacing"]["value"],
  )


def _write_json(path: pathlib.Path, value: Any) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=2) + "\n")
  tmp.replace(path)


def write_plan(
  output: str | os.PathLike[str],
  fingerprint: dict[str, Any],
  **plan_kwargs: Any,
) -> dict[str, Any]:
  """Plans and writes `fingerprint.json`, `plan.json` and `config.json`
  (and `data/` for a folder) into `output`; returns the plan."""
  from medseg_jax import run_config  # noqa: PLC0415

  output = pathlib.Path(output).resolve()
  output.mkdir(parents=True, exist_ok=True)
  _write_json(output / FINGERPRINT_FILE, fingerprint)
  data_folder = None
  if fingerprint["source"]["kind"] == "folder":
    # Spacing first: the folder JSON it writes is what the plan trains on.
    spacing, _ = target_spacing(fingerprint)
    data_folder = str(
      planned_data_folder(
        output, pathlib.Path(fingerprint["source"]["folder"]), spacing
      )
    )
  plan = make_plan(fingerprint, data_folder=data_folder, **plan_kwargs)
  _write_json(output / PLAN_FILE, plan)
  plan["_path"] = str(output / PLAN_FILE)
  sync_data_folder(plan)
  (output / CONFIG_FILE).write_text(run_config.to_json(config_from_plan(plan)))
  return plan


def summary(plan: dict[str, Any]) -> str:
  """One line per decision: name, value, reason."""
  lines = []
  for name, entry in plan["decisions"].items():
    value = json.dumps(entry["value"])
    if len(value) > 60:
      value = value[:57] + "..."
    lines.append(f"{name:17s} {value}\n{'':17s} {entry['reason']}")
  return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str]) -> None:
  from absl import app  # noqa: PLC0415
  from absl import flags  # noqa: PLC0415

  from medseg_jax import console  # noqa: PLC0415

  del argv
  f = flags.FLAGS
  if bool(f.folder) == bool(f.dataset):
    raise app.UsageError("Give exactly one of --folder or --dataset.")
  if f.dataset and not f.output:
    raise app.UsageError("--dataset needs --output=DIR.")
  output = pathlib.Path(
    f.output or pathlib.Path(f.folder) / DEFAULT_OUTPUT
  ).expanduser()
  output.mkdir(parents=True, exist_ok=True)
  console.setup(str(output))
  if f.folder:
    fingerprint = fingerprint_folder(f.folder)
  else:
    data_dir = os.path.expanduser(
      f.data_dir or os.environ.get("MEDSEG_DATA_DIR", "~/tensorflow_datasets")
    )
    fingerprint = fingerprint_dataset(f.dataset, data_dir, f.manual_dir)
  budget = _device_budget() if f.memory_gb <= 0 else int(f.memory_gb * 2**30)
  console.write(
    f"Fingerprint: {fingerprint['num_cases']} cases, median shape "
    f"{_fmt(fingerprint['median_shape'])}, spacing "
    f"{_fmt(fingerprint['median_spacing'])}. Fitting the patch to "
    f"{budget / 2**20:.1f} MiB:"
  )
  plan = write_plan(
    output,
    fingerprint,
    memory_budget_bytes=budget,
    base_features=f.base_features,
    steps=f.steps,
    num_folds=f.folds,
    log=console.write,
  )
  console.write(summary(plan))
  console.write(
    f"Wrote {output}/{{{FINGERPRINT_FILE}, {PLAN_FILE}, {CONFIG_FILE}}}."
  )


def _define_flags() -> None:
  from absl import flags  # noqa: PLC0415

  flags.DEFINE_string("folder", None, "A from_folder data folder.")
  flags.DEFINE_string("dataset", None, "A registered dataset name.")
  flags.DEFINE_string("manual_dir", None, "The dataset's manual_dir.")
  flags.DEFINE_string("data_dir", None, "TFDS data dir (--dataset).")
  flags.DEFINE_string(
    "output", None, f"Plan directory; default <folder>/{DEFAULT_OUTPUT}."
  )
  flags.DEFINE_float(
    "memory_gb",
    DEFAULT_MEMORY_GB,
    "Memory budget of the train step in GiB; 0: 85 % of this device's.",
  )
  flags.DEFINE_integer("base_features", 32, "Width of the first level.")
  flags.DEFINE_integer("steps", 0, "Step budget; 0: from the data.")
  flags.DEFINE_integer("folds", DEFAULT_FOLDS, "Cross-validation folds.")


if __name__ == "__main__":
  from medseg_jax import xla_cpu

  xla_cpu.configure_flags()
  from absl import app

  _define_flags()
  app.run(main)
