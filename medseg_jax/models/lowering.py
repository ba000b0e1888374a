"""Backend-specific kernels, and the one function that picks them.

The blocks in `layers.py` and `batch_norm.py` compute the same function on
every backend; what may differ is how an operation is lowered. XLA:CPU is
slow for three operations the models use all the time, so on the CPU they
are computed another way, with the same result up to float rounding (the
tests compare each against the Flax/XLA reference, values and gradients):

* 3-D convolution: XLA:CPU runs 2-D convolutions through a fast Eigen
  kernel but 3-D ones through a much slower generic loop.
  `depth_stacked_conv3d` folds depth into the batch and the depth taps into
  channels and does one 2-D convolution, 4-16x faster forward plus
  backward (`benchmarks/conv3d.py`).
* Max pooling with non-overlapping windows: XLA's gradient of a window
  reduction (`select_and_scatter`) is about 10x slower on the CPU than
  reading the pooled sub-grids and routing each output's gradient to the
  index of its maximum (`index_routed_max_pool`).
* Batch-norm channel sums (forward statistics and the closed-form
  backward): matrix-vector products with a vector of ones, which XLA:CPU
  hands to its matmul kernels, instead of reduction loops over the leading
  axes of a channels-last array (`channel_sums`).

Two more are custom calls into native libraries, used on the CPU where the
library is built and the process has one device (XLA cannot partition a
custom call): oneDNN's convolutions (`onednn.py`, `make onednn`) and a
fused training-mode batch norm + ReLU (`cpu_kernels.py`, built by `make
setup`), which reads and writes each activation about half as often as
XLA's fusions do.

`choose` is the one place that decides: the CPU gets all of them, other
backends XLA's own lowering. It also keeps XLA's 3-D convolution under a
context mesh whose `spatial` axis has more than one device (the models then
split depth over that axis, and moving depth into the batch would make XLA
gather whole volumes on every device in the backward pass). The first
decision of each kind is logged at INFO, e.g.

  CPU lowering: depth-stacked 3-D conv, index-routed max pool, fused
  batch norm, XLA convolutions

Each block also takes an explicit `impl` ("auto" asks `choose`), which the
tests and benchmarks use to run one lowering on any backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Iterator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from medseg_jax import sharding
from medseg_jax.models import cpu_kernels
from medseg_jax.models import onednn

CONV_IMPLS = ("auto", "xla", "depth_stacked")
MAX_POOL_IMPLS = ("auto", "xla", "index_routed")
BATCH_NORM_IMPLS = ("auto", "dot", "sum")

Padding = str | Sequence[tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class Lowering:
  """The kernels chosen for one backend (and mesh).

  Attributes:
    backend: the JAX backend name, e.g. `"cpu"`, `"gpu"`, `"tpu"`.
    conv3d: `"depth_stacked"` or `"xla"`, for the 3-D convolutions that
      `conv_impl_for` finds stackable.
    max_pool: `"index_routed"` or `"xla"` (`nn.max_pool`).
    batch_norm_sums: `"dot"` (matrix-vector products) or `"sum"`.
    conv_library: `"onednn"` (the custom calls in `onednn.py`, where they
      are built) or `"xla"`, for the convolutions of `conv_general`.
    batch_norm_kernel: `"fused"` (the custom calls in `cpu_kernels.py`:
      training-mode batch norm and its ReLU in one pass, where they are
      built) or `"xla"` (`batch_norm_train` with `batch_norm_sums`).
  """

  backend: str
  conv3d: str
  max_pool: str
  batch_norm_sums: str
  conv_library: str = "xla"
  batch_norm_kernel: str = "xla"

  def describe(self) -> str:
    """One line naming the choices, for the log."""
    conv = {"depth_stacked": "depth-stacked", "xla": "XLA"}[self.conv3d]
    pool = {"index_routed": "index-routed", "xla": "XLA window"}[self.max_pool]
    sums = {"dot": "matvec", "sum": "reduce"}[self.batch_norm_sums]
    library = {"onednn": "oneDNN", "xla": "XLA"}[self.conv_library]
    norm = {"fused": "fused", "xla": f"XLA ({sums} sums)"}[
      self.batch_norm_kernel
    ]
    return (
      f"{self.backend.upper()} lowering: {conv} 3-D conv, {pool} max pool, "
      f"{norm} batch norm, {library} convolutions"
    )


_LOGGED: set[Lowering] = set()
# Field -> value set by `override` (benchmarks and tests), else empty.
_OVERRIDE: dict[str, str] = {}
_CHOICES = {
  "conv3d": ("depth_stacked", "xla"),
  "max_pool": ("index_routed", "xla"),
  "batch_norm_sums": ("dot", "sum"),
  "conv_library": ("onednn", "xla"),
  "batch_norm_kernel": ("fused", "xla"),
}


@contextlib.contextmanager
def override(**choices: str) -> Iterator[None]:
  """Makes `choose` return these kernels while tracing inside the block.

  For measuring one kernel against another in a whole model (e.g.
  `benchmarks/train_throughput.py --lowering=max_pool=xla`): the choice is
  read when a function is traced, so compile inside the block.

  Args:
    **choices: `conv3d`, `max_pool`, `batch_norm_sums`, `conv_library`
      and/or `batch_norm_kernel`, each one of the values `Lowering`
      documents.

  Raises:
    ValueError: for an unknown field or value, naming the valid ones.
  """
  for field, value in choices.items():
    if field not in _CHOICES:
      raise ValueError(
        f"Unknown lowering field {field!r}; expected one of {tuple(_CHOICES)}."
      )
    if value not in _CHOICES[field]:
      raise ValueError(
        f"Unknown {field} lowering {value!r}; expected one of "
        f"{_CHOICES[field]}."
      )
  saved = dict(_OVERRIDE)
  _OVERRIDE.update(choices)
  try:
    yield
  finally:
    _OVERRIDE.clear()
    _OVERRIDE.update(saved)


def _splits_depth(mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh) -> bool:
  if mesh.empty:
    return False
  return dict(mesh.shape).get(sharding.SPATIAL_AXIS, 1) > 1


def choose(
  backend: str | None = None,
  mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
) -> Lowering:
  """Decides the lowering for a backend and mesh; logs each new decision.

  Args:
    backend: a JAX backend name; default `jax.default_backend()`.
    mesh: the mesh the model runs under; default the context mesh
      (`jax.set_mesh`), read at trace time.

  Returns:
    The `Lowering`: on the CPU depth-stacked 3-D convolutions (unless the
    mesh splits depth), index-routed max pooling and matvec batch-norm
    sums, and, where their libraries are built and the process has one
    device, oneDNN convolutions and the fused batch norm; on other
    backends XLA's own lowering of all. Fields set by an enclosing
    `override` win.
  """
  backend = jax.default_backend() if backend is None else backend
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  cpu = backend == "cpu"
  lowering = Lowering(
    backend=backend,
    conv3d="depth_stacked" if cpu and not _splits_depth(mesh) else "xla",
    max_pool="index_routed" if cpu else "xla",
    batch_norm_sums="dot" if cpu else "sum",
    conv_library=_custom_call_choice(
      cpu, "conv_library", "onednn", onednn.available
    ),
    batch_norm_kernel=_custom_call_choice(
      cpu, "batch_norm_kernel", "fused", cpu_kernels.available
    ),
  )
  lowering = dataclasses.replace(lowering, **_OVERRIDE)
  if lowering not in _LOGGED:
    _LOGGED.add(lowering)
    logging.info("%s", lowering.describe())
  return lowering


def _custom_call_choice(cpu: bool, field: str, native: str, available) -> str:
  """`native` for a native library's custom calls where they can run.

  XLA cannot partition a custom call, and arrays may be sharded even
  without a context mesh: only on the CPU, where the process has one
  device, the library loads (`available()`) and no override says "xla".
  """
  if (
    cpu
    and jax.device_count() == 1
    and _OVERRIDE.get(field) != "xla"
    and available()
  ):
    return native
  return "xla"


def _check(impl: str, valid: tuple[str, ...], what: str) -> None:
  if impl not in valid:
    raise ValueError(f"Unknown {what} impl {impl!r}; expected one of {valid}.")


# ---------------------------------------------------------------------------
# Convolution.


def conv_impl_for(
  impl: str,
  *,
  spatial_dims: int,
  kernel_size: int,
  strides: int,
  padding: Padding,
  dilation: int = 1,
) -> str:
  """Resolves a convolution implementation name to the one that runs.

  `"depth_stacked"` applies to 3-D, stride-1 convolutions with an odd
  kernel larger than 1 and 'SAME' padding (the string, or the equal
  symmetric padding `(k // 2 * dilation,) * 2` on every axis); anything
  else falls back to `"xla"`. `"auto"` takes `choose().conv3d` where the
  stacked form applies, except that with oneDNN convolutions
  (`choose().conv_library == "onednn"`) kernels up to 3 wide stay 3-D
  (`"xla"`, which `conv_general` hands to oneDNN).

  Args:
    impl: one of `CONV_IMPLS`.
    spatial_dims: 2 or 3.
    kernel_size: edge length of the kernel.
    strides: stride along every spatial axis.
    padding: `"SAME"`, `"VALID"` or `(low, high)` per spatial axis.
    dilation: kernel dilation along every spatial axis.

  Returns:
    `"depth_stacked"` or `"xla"`.
  """
  _check(impl, CONV_IMPLS, "conv")
  same = (kernel_size // 2 * dilation,) * 2
  stackable = (
    spatial_dims == 3
    and strides == 1
    and kernel_size % 2 == 1
    and kernel_size > 1
    and (
      padding == "SAME"
      or (
        not isinstance(padding, str)
        and [tuple(p) for p in padding] == [same] * spatial_dims
      )
    )
  )
  if not stackable or impl == "xla":
    return "xla"
  if impl == "auto":
    chosen = choose()
    # oneDNN's own 3-D convolution beats the stacked 2-D one (1677 against
    # 1930 ms per 3-D U-Net step, docs/cpu_performance.md), except for the
    # wide kernels `onednn.supports` leaves to XLA.
    if chosen.conv_library == "onednn" and kernel_size <= 3:
      return "xla"
    return chosen.conv3d
  return "depth_stacked"


def conv_general(
  x: jax.Array,
  kernel: jax.Array,
  strides: Sequence[int],
  padding: Padding,
  dilation: Sequence[int],
) -> jax.Array:
  """A channels-last convolution in the library `choose` picks.

  Equals `lax.conv_general_dilated(x, kernel, strides, padding,
  rhs_dilation=dilation)` with `NHWC`/`HWIO` (or `NDHWC`/`DHWIO`) layouts.
  Where `choose().conv_library` is `"onednn"`, it and its gradients are
  oneDNN's primitives (`onednn.conv`).

  Args:
    x: `f[B, *S, C_in]`, 2 or 3 spatial axes.
    kernel: `f[*K, C_in, C_out]`.
    strides: one per spatial axis.
    padding: `"SAME"`, `"VALID"` or `(low, high)` per spatial axis.
    dilation: kernel dilation per spatial axis.

  Returns:
    `f[B, *S', C_out]`.
  """
  d = kernel.ndim - 2
  strides, dilation = tuple(strides), tuple(dilation)
  if not isinstance(padding, str):
    padding = tuple(tuple(p) for p in padding)
  if choose().conv_library == "onednn":
    pads = onednn.explicit_padding(
      x.shape, kernel.shape, strides, padding, dilation
    )
    if onednn.supports(x, kernel, pads):
      return onednn.conv(x, kernel, strides, pads, dilation)
  spec = "NDHWC" if d == 3 else "NHWC"
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    window_strides=strides,
    padding=padding,
    rhs_dilation=dilation,
    dimension_numbers=(spec, ("DHW" if d == 3 else "HW") + "IO", spec),
  )


def depth_stacked_conv3d(
  x: jax.Array, kernel: jax.Array, dilation: int = 1
) -> jax.Array:
  """A stride-1 'SAME' k^3 convolution computed as one 2-D convolution.

  The k depth taps are folded into channels and depth into the batch:

  * `C_in <= C_out`: the depth-padded input is stacked with its k depth
    shifts (`[B * D, H, W, k * C_in]`) and one k x k 2-D convolution with
    `k * C_in` input channels does the rest.
  * `C_in > C_out`: one k x k 2-D convolution of the unshifted input to
    `k * C_out` channels, one group per depth tap, whose groups are then
    shifted along depth and summed (the cheaper side to copy).

  Either way the result equals `lax.conv_general_dilated` on the 3-D input
  with 'SAME' padding up to float rounding.

  Args:
    x: `f[B, D, H, W, C_in]`.
    kernel: `f[k, k, k, C_in, C_out]` (depth, height, width, in, out), k odd.
    dilation: kernel dilation (atrous rate) along every spatial axis.

  Returns:
    `f[B, D, H, W, C_out]`.
  """
  k = kernel.shape[0]
  r = k // 2 * dilation
  b, d, h, w, c = x.shape
  f = kernel.shape[-1]

  def conv2d(inputs, kernel_2d):
    return conv_general(
      inputs, kernel_2d, (1, 1), ((r, r), (r, r)), (dilation, dilation)
    )

  # Output depth t takes tap i from input depth t + i * dilation - r.
  if c <= f:
    padded = jnp.pad(x, ((0, 0), (r, r), (0, 0), (0, 0), (0, 0)))
    stacked = jnp.concatenate(
      [padded[:, i * dilation : i * dilation + d] for i in range(k)], -1
    )
    # [kd, kh, kw, C, F] -> [kh, kw, kd * C, F], the stacking order.
    kernel_2d = kernel.transpose(1, 2, 0, 3, 4).reshape(k, k, k * c, f)
    y = conv2d(stacked.reshape(b * d, h, w, k * c), kernel_2d)
    return y.reshape(b, d, h, w, f)
  # [kd, kh, kw, C, F] -> [kh, kw, C, kd * F]: one output group per tap.
  kernel_2d = kernel.transpose(1, 2, 3, 0, 4).reshape(k, k, c, k * f)
  z = conv2d(x.reshape(b * d, h, w, c), kernel_2d).reshape(b, d, h, w, k, f)
  z = jnp.pad(z, ((0, 0), (r, r), (0, 0), (0, 0), (0, 0), (0, 0)))
  return sum(z[:, i * dilation : i * dilation + d, :, :, i] for i in range(k))


# ---------------------------------------------------------------------------
# Max pooling.


def max_pool_impl_for(impl: str, *, window: int, strides: int) -> str:
  """Resolves a max-pool implementation name to the one that runs.

  `"index_routed"` applies to non-overlapping windows (`window ==
  strides`), anything else falls back to `"xla"`: with overlapping windows
  XLA:CPU fuses the index computation into every tap of the backward pass
  and recomputes it there, which made the 2-D 3^2 stride-2 pool's gradient
  about 2x slower than XLA's own. `"auto"` takes `choose().max_pool` where
  the index-routed form applies.

  Args:
    impl: one of `MAX_POOL_IMPLS`.
    window: window edge length.
    strides: stride along every spatial axis.

  Returns:
    `"index_routed"` or `"xla"`.
  """
  _check(impl, MAX_POOL_IMPLS, "max pool")
  if window != strides or impl == "xla":
    return "xla"
  return choose().max_pool if impl == "auto" else impl


def index_routed_max_pool(
  x: jax.Array, window: int, padding: Sequence[tuple[int, int]]
) -> jax.Array:
  """k^d max pooling with stride k whose gradient is routed by an index.

  The same function and the same gradient as `nn.max_pool(x, (k,) * d,
  strides=(k,) * d, padding)`: the input is padded with -inf, trailing
  rows that no window covers are dropped, and the gradient of each output
  goes to the first maximum of its window in row-major order, ties
  included, as XLA's `select_and_scatter` does. The maximum is taken over
  the k^d strided sub-grids of `x` (a reshape) by a pairwise tournament
  that also yields the index of the winner, and the backward pass writes
  each output's gradient straight into that position of the block layout.
  XLA:CPU's `select_and_scatter` is about 10x slower: 22 ms at
  8x128x128x16 for k = 2.

  Args:
    x: `f[B, *S, C]`.
    window: the window edge length k, also the stride.
    padding: `(low, high)` per spatial axis.

  Returns:
    `f[B, *S', C]` with `S'_i = (S_i + low_i + high_i) // k`.
  """
  pads = [(0, 0), *(tuple(p) for p in padding), (0, 0)]
  if any(p != (0, 0) for p in pads):
    x = jnp.pad(x, pads, constant_values=-jnp.inf)
  crop = [slice(0, n - n % window) for n in x.shape[1:-1]]
  windows = (window,) * (x.ndim - 2)
  return _block_max(x[(slice(None), *crop)], windows)


def _first_max(taps: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Elementwise max of `taps` and the index of the first maximum.

  A pairwise tournament between neighbours that keeps the left operand on
  ties (an odd one out goes through unmatched), so the index is always
  that of the first maximum, as in XLA's `select_and_scatter`, and it comes
  from the same comparisons as the maximum itself.
  """
  dtype = jnp.int8 if len(taps) <= 127 else jnp.int32
  values = list(taps)
  indices = [jnp.full(t.shape, i, dtype) for i, t in enumerate(taps)]
  while len(values) > 1:
    next_values, next_indices = [], []
    for i in range(0, len(values) - 1, 2):
      keep = values[i] >= values[i + 1]
      next_values.append(jnp.where(keep, values[i], values[i + 1]))
      next_indices.append(jnp.where(keep, indices[i], indices[i + 1]))
    if len(values) % 2:
      next_values.append(values[-1])
      next_indices.append(indices[-1])
    values, indices = next_values, next_indices
  return values[0], indices[0]


def _block_taps(x: jax.Array, window: tuple[int, ...]) -> list[jax.Array]:
  """The sub-grids of `f[B, *(S * window), C]`, row-major tap order."""
  shape = [x.shape[0]]
  for n, k in zip(x.shape[1:-1], window, strict=True):
    shape += [n // k, k]
  x = x.reshape(*shape, x.shape[-1])
  grids = []
  for offsets in itertools.product(*(range(k) for k in window)):
    index = [slice(None)]
    for offset in offsets:
      index += [slice(None), offset]
    grids.append(x[tuple(index)])
  return grids


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _block_max(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """Max over blocks: `f[B, *(S * window), C] -> f[B, *S, C]`."""
  return _first_max(_block_taps(x, window))[0]


def _block_max_fwd(x, window):
  return _first_max(_block_taps(x, window))


def _block_max_bwd(window, index, g):
  # Each output's gradient goes to the one input that was its maximum,
  # written straight into the [B, S_0, k_0, S_1, k_1, ..., C] block layout.
  expand = [slice(None)]
  for _ in window:
    expand += [slice(None), None]
  index, g = index[tuple(expand)], g[tuple(expand)]
  # position[0, :, a_0, :, a_1, ..., 0] = row-major index of (a_0, a_1, ...).
  layout = [1]
  for k in window:
    layout += [1, k]
  position = np.arange(int(np.prod(window)), dtype=index.dtype)
  dx = jnp.where(index == position.reshape(*layout, 1), g, 0)
  blocks = zip(g.shape[1:-1:2], window, strict=True)
  shape = (g.shape[0], *(n * k for n, k in blocks), g.shape[-1])
  return (dx.reshape(shape),)


_block_max.defvjp(_block_max_fwd, _block_max_bwd)


# ---------------------------------------------------------------------------
# Batch-norm channel sums.


def batch_norm_impl_for(impl: str) -> str:
  """Resolves a batch-norm sums implementation name: `"dot"` or `"sum"`."""
  _check(impl, BATCH_NORM_IMPLS, "batch norm")
  return choose().batch_norm_sums if impl == "auto" else impl


def channel_sums(x: jax.Array, impl: str) -> jax.Array:
  """Sum of `f32[..., C]` over every axis but the last: `f32[C]`.

  Args:
    x: `f32[..., C]`.
    impl: `"dot"`, a matrix-vector product with a vector of ones at
      `Precision.HIGHEST` (XLA:CPU's matmul kernels), or `"sum"`.
  """
  rows = x.reshape(-1, x.shape[-1])
  if impl == "dot":
    ones = jnp.ones((rows.shape[0],), rows.dtype)
    return jnp.dot(ones, rows, precision=jax.lax.Precision.HIGHEST)
  return rows.sum(axis=0)
