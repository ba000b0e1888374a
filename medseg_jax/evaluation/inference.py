"""Sliding-window inference, flip test-time augmentation, post-processing.

A network trained on patches is applied to a volume of any size by tiling it
with overlapping windows of the training patch size, predicting each window
and blending the predictions:

  out(x) = sum_i w_i(x) p_i(x) / sum_i w_i(x)

where the sum runs over the windows `i` that contain voxel `x`, `p_i` is the
prediction of window `i` and `w_i` its importance map (a Gaussian centred on
the window, so that voxels near a window's border, which saw little context,
count less; or constant). The blend is seam-free: a predictor whose output
does not depend on the window gives back exactly its output.

Pieces, all pure functions:

* `window_starts(shape, window, overlap)`: where the windows go. Per axis the
  number of windows is the smallest that keeps neighbours at most
  `window * (1 - overlap)` apart; they are spread evenly with the first at 0
  and the last ending at the border (nnU-Net's placement). An axis shorter
  than the window is padded to the window (symmetrically) first.
* `gaussian_weights(window, sigma_scale)`: the importance map,
  `sigma = sigma_scale * window` per axis (nnU-Net: 1/8), maximum 1.
* `sliding_window_predict(predict_fn, image, ...)`: the loop. Windows go
  through `predict_fn` `sw_batch_size` at a time with one fixed shape
  `[sw_batch_size, *window, C]` (the last batch is padded), so a jitted
  predictor compiles once for all volumes. Window extraction and the
  weighted accumulation run on device in two small jitted functions that
  update the accumulators in place (`accumulate="device"`, the default and
  the faster on CPU as well: see benchmarks/sliding_window.py), or with
  NumPy on the host (`accumulate="host"`).
* `make_apply(model, flip_axes)`: a jitted `(variables, x) -> probs`
  from a Flax model, flip TTA included; `make_window_predictor(model,
  variables)` binds the variables.
* `flip_tta(predict_fn, axes)`: flip ensembling over every subset of the
  given spatial axes.
* `keep_largest_component(label, classes)`: per foreground class, keep only
  the largest connected component (scipy.ndimage.label).

Example:

  >>> model = get_model("unet", num_classes=3, spatial_dims=3,
  ...                   features=(8, 16, 32, 64), norm="instance")
  >>> predict_fn = make_window_predictor(model, variables)
  >>> probs = sliding_window_predict(predict_fn, image,  # f32[D, H, W, 1]
  ...                                window=(96, 96, 96), overlap=0.5)
  >>> label = keep_largest_component(np.argmax(probs, axis=-1))

References:

* F. Isensee et al. "nnU-Net: a self-configuring method for deep
  learning-based biomedical image segmentation". Nature Methods 2021
  (Gaussian importance weighting, sigma = 1/8 of the patch size, step size
  0.5, mirroring test-time augmentation, largest-component post-processing).
"""

import functools
import itertools
from collections.abc import Callable
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

PredictFn = Callable[[jax.Array], jax.Array]
MODES = ("gaussian", "constant")
ACCUMULATE = ("device", "host")


def _per_axis(value, ndim: int, name: str) -> tuple:
  """Broadcasts a scalar to `ndim` entries; checks a sequence's length."""
  if isinstance(value, Sequence) and not isinstance(value, str):
    value = tuple(value)
    if len(value) != ndim:
      raise ValueError(
        f"{name} must have {ndim} entries (one per spatial axis), got {value}."
      )
    return value
  return (value,) * ndim


def window_starts(
  shape: Sequence[int],
  window: int | Sequence[int],
  overlap: float | Sequence[float] = 0.5,
) -> list[tuple[int, ...]]:
  """Start corners of the windows that tile a volume.

  Per axis of size `s` and window `w`: if `s <= w` there is one window at 0
  (the caller pads the axis to `w`). Otherwise there are
  `n = ceil((s - w) / (w * (1 - overlap))) + 1` windows, starting at
  `round(k * (s - w) / (n - 1))`, `k = 0, ..., n - 1`: the first starts at 0,
  the last ends exactly at `s`, and neighbours overlap by at least
  `overlap * w` voxels. The windows are the Cartesian product of the axes'
  starts, last axis fastest.

  Example:

    >>> window_starts((10, 4), (4, 4), overlap=0.5)
    [(0, 0), (2, 0), (4, 0), (6, 0)]

  Args:
    shape: spatial shape `S` of the volume.
    window: window size, one int for all axes or one per axis.
    overlap: fraction of a window that neighbours share, in `[0, 1)`; one
      for all axes or one per axis.

  Returns:
    The start corners, each a tuple of `len(shape)` ints.

  Raises:
    ValueError: on a non-positive window or an overlap outside `[0, 1)`.
  """
  shape = tuple(int(s) for s in shape)
  ndim = len(shape)
  window = _per_axis(window, ndim, "window")
  overlap = _per_axis(overlap, ndim, "overlap")
  per_axis = []
  for s, w, o in zip(shape, window, overlap, strict=True):
    if w < 1:
      raise ValueError(f"window sizes must be >= 1, got {window}.")
    if not 0.0 <= o < 1.0:
      raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    if s <= w:
      per_axis.append([0])
      continue
    step = w * (1.0 - o)
    n = int(np.ceil((s - w) / step - 1e-9)) + 1
    spacing = (s - w) / (n - 1)
    per_axis.append([int(round(k * spacing)) for k in range(n)])
  return list(itertools.product(*per_axis))


def gaussian_weights(
  window: Sequence[int], sigma_scale: float = 0.125
) -> np.ndarray:
  """Gaussian importance map of a window, maximum 1.

  `g(x) = prod_a exp(-(x_a - c_a)^2 / (2 sigma_a^2))` with the centre
  `c_a = (w_a - 1) / 2` and `sigma_a = sigma_scale * w_a` (nnU-Net uses
  1/8). Values that underflow float32 are raised to the smallest positive
  value, so every voxel of a window has positive weight and the blend never
  divides by zero.

  Args:
    window: window size `W` per spatial axis.
    sigma_scale: standard deviation as a fraction of the window size.

  Returns:
    `f32[*W]`.
  """
  if sigma_scale <= 0:
    raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}.")
  g = np.ones((), np.float64)
  for w in window:
    x = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
    g = np.multiply.outer(g, np.exp(-0.5 * (x / (sigma_scale * w)) ** 2))
  g = (g / g.max()).astype(np.float32)
  positive = g[g > 0]
  return np.maximum(g, positive.min()).astype(np.float32)


def importance_weights(
  window: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125
) -> np.ndarray:
  """`gaussian_weights` for `mode="gaussian"`, ones for `"constant"`."""
  if mode == "gaussian":
    return gaussian_weights(window, sigma_scale)
  if mode == "constant":
    return np.ones(tuple(window), np.float32)
  raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}.")


def make_apply(
  model: nn.Module, *, flip_axes: Sequence[int] = (), softmax: bool = True
) -> Callable[[object, jax.Array], jax.Array]:
  """A jitted `(variables, x) -> prediction` from a Flax segmentation model.

  The variables are an argument, not constants baked into the compiled
  function, so large models compile quickly and one compiled function
  serves every checkpoint (the trainer's validations). The model runs with
  `train=False`.

  Args:
    model: a module mapping `f32[N, *W, C]` to logits `f32[N, *W, K]`.
    flip_axes: flip test-time augmentation over these spatial axes (see
      `flip_tta`); `()` for none.
    softmax: return probabilities (softmax over the last axis) instead of
      logits; flip TTA averages whichever is returned.

  Returns:
    `apply(variables, f32[N, *W, C]) -> f32[N, *W, K]`.
  """
  subsets = _flip_subsets(flip_axes)

  def forward(variables, x):
    logits = model.apply(variables, x, train=False).astype(jnp.float32)
    return jax.nn.softmax(logits, axis=-1) if softmax else logits

  @jax.jit
  def apply(variables, x):
    if not flip_axes:
      return forward(variables, x)
    return _flip_mean(functools.partial(forward, variables), subsets, x)

  return apply


def make_window_predictor(
  model: nn.Module, variables, *, softmax: bool = True
) -> PredictFn:
  """`make_apply(model)` with `variables` bound: `f32[N, *W, C] ->
  f32[N, *W, K]`, for `sliding_window_predict`."""
  return functools.partial(make_apply(model, softmax=softmax), variables)


def _flip_subsets(axes: Sequence[int]) -> list[tuple[int, ...]]:
  """Every subset of the spatial `axes`, as array axes (batch first)."""
  axes = tuple(int(a) for a in axes)
  if len(set(axes)) != len(axes):
    raise ValueError(f"flip_tta: repeated axes {axes}.")
  return [
    tuple(a + 1 for a in subset)
    for r in range(len(axes) + 1)
    for subset in itertools.combinations(axes, r)
  ]


def _flip_mean(
  predict_fn: PredictFn, subsets: list[tuple[int, ...]], x: jax.Array
) -> jax.Array:
  """The mean over `subsets` of `flip(predict_fn(flip(x)))`."""
  spatial = x.ndim - 2
  if any(not 1 <= a <= spatial for subset in subsets for a in subset):
    axes = sorted({a - 1 for subset in subsets for a in subset})
    raise ValueError(
      f"flip_tta: axes {tuple(axes)} out of range for {spatial} spatial axes."
    )
  flipped = jnp.stack([jnp.flip(x, s) if s else x for s in subsets])
  outs = jax.lax.map(predict_fn, flipped)
  total = sum(
    jnp.flip(outs[i], s) if s else outs[i] for i, s in enumerate(subsets)
  )
  return total / len(subsets)


def flip_tta(predict_fn: PredictFn, axes: Sequence[int]) -> PredictFn:
  """Flip test-time augmentation: the mean over all flips of `axes`.

  For every subset `A` of `axes` (the empty set included, `2**len(axes)`
  in all) the input windows are flipped along `A`, predicted, and the
  prediction flipped back; the result is the mean. The network is traced
  once: the flipped inputs are stacked and mapped sequentially
  (`jax.lax.map`), so memory is that of one plain call.

  Args:
    predict_fn: `f32[N, *W, C] -> f32[N, *W, K]`.
    axes: spatial axes to flip, counted from 0 over `W` (so 0 is array
      axis 1).

  Returns:
    A jitted `predict_fn` with the same signature.
  """
  subsets = _flip_subsets(axes)
  return jax.jit(functools.partial(_flip_mean, predict_fn, subsets))


@functools.partial(jax.jit, static_argnames=("window",))
def _extract_windows(
  image: jax.Array, starts: jax.Array, window: tuple[int, ...]
) -> jax.Array:
  """`f32[*P, C]`, `i32[N, d]` -> the windows `f32[N, *W, C]`."""
  channels = image.shape[-1]

  def one(start):
    return jax.lax.dynamic_slice(image, (*start, 0), (*window, channels))

  return jax.vmap(one)(starts)


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _accumulate(
  acc: jax.Array,
  wsum: jax.Array,
  preds: jax.Array,
  weights: jax.Array,
  starts: jax.Array,
  count: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Adds the first `count` weighted windows into the accumulators in place.

  Args:
    acc: `f32[*P, K]` weighted sum of predictions.
    wsum: `f32[*P, 1]` sum of weights.
    preds: `f32[N, *W, K]`.
    weights: `f32[*W, 1]`.
    starts: `i32[N, d]`.
    count: `i32[]`, the number of real windows in the batch.
  """

  def body(i, carry):
    acc, wsum = carry
    start = (*starts[i], 0)
    p = preds[i] * weights
    acc_win = jax.lax.dynamic_slice(acc, start, p.shape)
    acc = jax.lax.dynamic_update_slice(acc, acc_win + p, start)
    w_win = jax.lax.dynamic_slice(wsum, start, weights.shape)
    wsum = jax.lax.dynamic_update_slice(wsum, w_win + weights, start)
    return acc, wsum

  return jax.lax.fori_loop(0, count, body, (acc, wsum))


@functools.partial(jax.jit, static_argnames=("crop",))
def _normalise(
  acc: jax.Array, wsum: jax.Array, crop: tuple[tuple[int, int], ...]
) -> jax.Array:
  """`acc / wsum`, cropped to `[(begin, end), ...]` per spatial axis."""
  # XLA rewrites `x / broadcast(y)` as `x * broadcast(1 / y)`, which is off
  # by an ulp; materialising the broadcast keeps the division exact, so a
  # predictor independent of the window is reproduced bit for bit.
  wsum = jax.lax.optimization_barrier(jnp.broadcast_to(wsum, acc.shape))
  out = acc / wsum
  return out[tuple(slice(b, e) for b, e in crop)]


def sliding_window_predict(
  predict_fn: PredictFn,
  image: jax.typing.ArrayLike,
  *,
  window: int | Sequence[int],
  overlap: float | Sequence[float] = 0.5,
  sw_batch_size: int = 4,
  mode: str = "gaussian",
  sigma_scale: float = 0.125,
  num_classes: int | None = None,
  pad_value: float = 0.0,
  accumulate: str = "device",
) -> jax.Array | np.ndarray:
  """Predicts a whole volume by blending overlapping window predictions.

  The volume is padded with `pad_value` (symmetrically) along every axis
  shorter than the window, tiled with `window_starts`, the windows are
  predicted `sw_batch_size` at a time (the last batch is filled up with
  copies of the first window and the extra predictions dropped), each
  prediction is multiplied by the importance map and added into an
  accumulator, the importance maps into a second one; the result is their
  ratio, cropped back to the volume.

  Every call of `predict_fn` has the same input shape
  `[sw_batch_size, *window, C]`, so a jitted predictor compiles once. Pass
  probabilities (e.g. `make_window_predictor`) to blend probabilities, or
  logits to blend logits.

  Args:
    predict_fn: `f32[N, *W, C] -> f32[N, *W, K]`.
    image: `f32[*S, C]` volume (2-D or 3-D, channels last, no batch axis).
    window: window size `W`, one int or one per spatial axis.
    overlap: fraction of the window shared by neighbours, in `[0, 1)`.
    sw_batch_size: windows per call of `predict_fn`.
    mode: `"gaussian"` or `"constant"` importance map.
    sigma_scale: Gaussian sigma as a fraction of the window (nnU-Net: 1/8).
    num_classes: `K`, checked against `predict_fn`'s output if given.
    pad_value: value of the padding added to axes shorter than the window.
    accumulate: `"device"` (jnp, in-place updates; returns a `jax.Array`)
      or `"host"` (NumPy; returns an `np.ndarray`).

  Returns:
    `f32[*S, K]` blended predictions.

  Raises:
    ValueError: on inconsistent shapes or unknown options.
  """
  if accumulate not in ACCUMULATE:
    raise ValueError(
      f"Unknown accumulate {accumulate!r}; expected one of {ACCUMULATE}."
    )
  if sw_batch_size < 1:
    raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
  image_shape = tuple(np.shape(image))
  if len(image_shape) not in (3, 4):
    raise ValueError(
      "sliding_window_predict: image must be f32[*S, C] with 2 or 3 "
      f"spatial axes, got shape {image_shape}."
    )
  spatial = image_shape[:-1]
  channels = image_shape[-1]
  ndim = len(spatial)
  window = tuple(int(w) for w in _per_axis(window, ndim, "window"))
  weights = importance_weights(window, mode, sigma_scale)

  out_spec = jax.eval_shape(
    predict_fn,
    jax.ShapeDtypeStruct((sw_batch_size, *window, channels), jnp.float32),
  )
  if tuple(out_spec.shape[:-1]) != (sw_batch_size, *window):
    raise ValueError(
      "predict_fn must map [N, *W, C] to [N, *W, K]; for input "
      f"{(sw_batch_size, *window, channels)} it returns {out_spec.shape}."
    )
  k = out_spec.shape[-1]
  if num_classes is not None and num_classes != k:
    raise ValueError(
      f"num_classes={num_classes} but predict_fn returns {k} channels."
    )

  # Pad axes shorter than the window, half before and half after.
  pad = [
    ((w - s) // 2, (w - s) - (w - s) // 2) if s < w else (0, 0)
    for s, w in zip(spatial, window, strict=True)
  ]
  padded = tuple(s + a + b for s, (a, b) in zip(spatial, pad, strict=True))
  crop = tuple((a, a + s) for s, (a, _) in zip(spatial, pad, strict=True))
  starts = np.asarray(window_starts(padded, window, overlap), np.int32)
  num_windows = len(starts)
  num_batches = -(-num_windows // sw_batch_size)
  fill = num_batches * sw_batch_size - num_windows
  starts_padded = np.concatenate(
    [starts, np.repeat(starts[:1], fill, axis=0)]
  ).reshape(num_batches, sw_batch_size, ndim)

  if accumulate == "device":
    image = jnp.pad(
      jnp.asarray(image, jnp.float32),
      pad + [(0, 0)],
      constant_values=pad_value,
    )
    weights_dev = jnp.asarray(weights)[..., None]
    acc = jnp.zeros((*padded, k), jnp.float32)
    wsum = jnp.zeros((*padded, 1), jnp.float32)
    for b in range(num_batches):
      batch_starts = jnp.asarray(starts_padded[b])
      windows = _extract_windows(image, batch_starts, window)
      preds = predict_fn(windows).astype(jnp.float32)
      count = min(sw_batch_size, num_windows - b * sw_batch_size)
      acc, wsum = _accumulate(
        acc, wsum, preds, weights_dev, batch_starts, jnp.int32(count)
      )
    return _normalise(acc, wsum, crop)

  image = np.pad(
    np.asarray(image, np.float32),
    pad + [(0, 0)],
    constant_values=pad_value,
  )
  acc = np.zeros((*padded, k), np.float32)
  wsum = np.zeros(padded, np.float32)
  weights_k = weights[..., None]

  def slices(start):
    return tuple(slice(s, s + w) for s, w in zip(start, window, strict=True))

  def add(preds, batch_starts, count):
    preds = np.asarray(preds, np.float32)
    for i in range(count):
      sl = slices(batch_starts[i])
      acc[sl] += preds[i] * weights_k
      wsum[sl] += weights

  # One batch in flight: the next is dispatched before the previous one's
  # result is read, so window extraction and accumulation on the host
  # overlap with the predictor's asynchronous execution.
  pending = None
  for b in range(num_batches):
    batch_starts = starts_padded[b]
    windows = np.stack([image[slices(s)] for s in batch_starts])
    preds = predict_fn(jnp.asarray(windows))
    count = min(sw_batch_size, num_windows - b * sw_batch_size)
    if pending is not None:
      add(*pending)
    pending = (preds, batch_starts, count)
  add(*pending)
  out = acc / wsum[..., None]
  return out[tuple(slice(b, e) for b, e in crop)]


def keep_largest_component(
  label: np.ndarray,
  classes: Sequence[int] | None = None,
  *,
  connectivity: int = 1,
  background: int = 0,
) -> np.ndarray:
  """Keeps only the largest connected component of each foreground class.

  For every class `c` in `classes`, the voxels `label == c` are split into
  connected components (`scipy.ndimage.label`); all but the largest are set
  to `background`. Ties keep the component found first (in C order).
  Classes not listed, and the background, are untouched.

  Example:

    >>> keep_largest_component(np.array([1, 1, 0, 1, 2, 0, 2, 2]))
    array([1, 1, 0, 0, 0, 0, 2, 2])

  Args:
    label: `int[*S]` hard segmentation (any number of axes).
    classes: the classes to clean; default every value present other than
      `background`.
    connectivity: neighbourhood of `scipy.ndimage.generate_binary_structure`:
      1 (faces, the default), up to `label.ndim` (faces, edges and corners).
    background: the value removed voxels take.

  Returns:
    `int[*S]` cleaned copy, same dtype.
  """
  label = np.asarray(label)
  if not np.issubdtype(label.dtype, np.integer):
    raise ValueError(
      f"keep_largest_component: label must be integer, got {label.dtype}."
    )
  if not 1 <= connectivity <= max(label.ndim, 1):
    raise ValueError(
      f"connectivity must be in [1, {label.ndim}], got {connectivity}."
    )
  if classes is None:
    classes = [int(c) for c in np.unique(label) if c != background]
  structure = scipy.ndimage.generate_binary_structure(label.ndim, connectivity)
  out = label.copy()
  for c in classes:
    if c == background:
      continue
    components, n = scipy.ndimage.label(label == c, structure=structure)
    if n <= 1:
      continue
    sizes = np.bincount(components.ravel())
    sizes[0] = 0  # Not the class.
    largest = int(np.argmax(sizes))
    out[(components != largest) & (components > 0)] = background
  return out
