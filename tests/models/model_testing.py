"""Helpers shared by the model tests: fast compiles, shapes, host init.

Compiling dominates the model tests on CPU, so they trace abstractly where
shapes suffice (`abstract`), compile with XLA's optimisations off (`jit`)
and draw their variables on the host (`init`) instead of compiling Flax's
initialisers.
"""

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

# XLA options for the tests' jitted calls: optimising costs more than the
# tiny models' run time saves.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def jit(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`jax.jit` with `FAST_COMPILE`."""
  return jax.jit(fn, compiler_options=FAST_COMPILE)


def abstract_variables(model: nn.Module, shape: Sequence[int]) -> Any:
  """The shapes and dtypes of `model.init`'s variables for a float input.

  Args:
    model: The model, called as `model(x, train=...)`.
    shape: The input's shape.

  Returns:
    The variables as a tree of `jax.ShapeDtypeStruct`; nothing is compiled
    or allocated.
  """
  x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  return jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), x
  )


def abstract(
  model: nn.Module,
  shape: Sequence[int],
  *,
  train: bool = False,
  mutable: Any = False,
) -> tuple[Any, Any]:
  """Abstract init and apply: traces everything, compiles nothing.

  Args:
    model: The model, called as `model(x, train=...)`.
    shape: The input's shape (float32).
    train: Passed to `model.apply`.
    mutable: Passed to `model.apply`; when not False the output is a pair
      (outputs, updated collections), as from `model.apply`.

  Returns:
    (variables, output) as trees of `jax.ShapeDtypeStruct`.
  """
  variables = abstract_variables(model, shape)
  out = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=train, mutable=mutable),
    variables,
    jax.ShapeDtypeStruct(tuple(shape), jnp.float32),
  )
  return variables, out


def init(
  model: nn.Module,
  shape: Sequence[int],
  seed: int = 0,
  *,
  host_dtype: Any = np.float64,
  real_init: bool = False,
) -> tuple[Any, jax.Array]:
  """A random standard-normal input and variables for `model`.

  Compiling Flax's initialisers takes seconds per model on CPU even
  unoptimised (a truncated normal per kernel), several times an
  unoptimised forward pass. So unless `real_init`, the variables get the
  structure of `model.init` (from `jax.eval_shape`) and values drawn on the
  host on the same scale: He-normal kernels, unit norm scales and
  variances, PReLU slopes of 0.25 (Flax's default), zero biases and means.

  Args:
    model: The model, called as `model(x, train=...)`.
    shape: The input's shape.
    seed: Seeds the host generator, which draws the input first and then
      the kernels in the variables' tree order.
    host_dtype: The precision of the host draws, float64 or float32; the
      two give different values from the same seed.
    real_init: Compile and run `model.init` instead (with `jax.random.key(1)`
      as its key); the input is drawn all the same.

  Returns:
    (variables, x): the variables in the dtypes of `model.init`'s, and the
    float32 input.
  """
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape, host_dtype), jnp.float32)
  if real_init:
    variables = jit(lambda k, x: model.init(k, x, train=False))(
      jax.random.key(1), x
    )
    return variables, x

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      value = std * rng.standard_normal(leaf.shape, host_dtype)
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    elif name == "negative_slope":
      value = np.full(leaf.shape, 0.25)
    else:
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  shapes = abstract_variables(model, shape)
  return jax.tree_util.tree_map_with_path(fill, shapes), x


def apply(model: nn.Module, variables: Any, x: jax.Array, **kwargs) -> Any:
  """`model.apply(variables, x, **kwargs)` through `jit`."""
  return jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def num_params(tree: Any) -> int:
  """The number of scalars in a tree of arrays or shapes."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def cross_entropy(
  logits: jax.Array, labels: jax.Array, num_classes: int
) -> jax.Array:
  """Mean softmax cross-entropy of `logits` against integer `labels`."""
  one_hot = jax.nn.one_hot(labels, num_classes)
  return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), -1))


def train_gradients(
  model: nn.Module,
  variables: Any,
  x: jax.Array,
  num_classes: int,
  *,
  rngs: Any = None,
) -> tuple[Any, Any]:
  """Gradients of a training-mode cross-entropy on random labels.

  Args:
    model: A segmentation model returning logits of `num_classes` channels.
    variables: Its variables, with a "params" collection.
    x: The input batch.
    num_classes: The number of classes; labels are drawn uniformly with
      `jax.random.key(2)`, one per input pixel.
    rngs: Passed to `model.apply` (e.g. for dropout).

  Returns:
    (gradients with respect to variables["params"], the updated
    "batch_stats", empty without batch norm), computed under `jit`.
  """
  labels = jax.random.randint(jax.random.key(2), x.shape[:-1], 0, num_classes)

  def loss_fn(params):
    logits, updates = model.apply(
      {**variables, "params": params},
      x,
      train=True,
      mutable=["batch_stats"],
      rngs=rngs,
    )
    return cross_entropy(logits, labels, num_classes), updates

  return jit(jax.grad(loss_fn, has_aux=True))(variables["params"])


def assert_finite(tree: Any, *, nonzero: bool = False) -> None:
  """Asserts every array in `tree` is finite and, if `nonzero`, not all 0."""
  for leaf in jax.tree.leaves(tree):
    assert bool(jnp.all(jnp.isfinite(leaf)))
    if nonzero:
      assert bool(jnp.any(leaf != 0))


def assert_all_changed(before: Any, after: Any) -> None:
  """Asserts every array of `after` differs from its match in `before`."""
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
  assert all(jax.tree.leaves(changed))


def assert_logits(logits: Any, shape: Sequence[int], num_classes: int) -> None:
  """Asserts float32 logits for an input of `shape`, one per class."""
  assert logits.shape == (*shape[:-1], num_classes)
  assert logits.dtype == jnp.float32


def assert_rejects(
  model: nn.Module, cases: Sequence[tuple[Sequence[int], str]]
) -> None:
  """Asserts `model` raises a ValueError for each (input shape, pattern).

  Args:
    model: The model, traced abstractly (`abstract`).
    cases: Input shapes and the regular expression each error must match.
  """
  for shape, pattern in cases:
    with pytest.raises(ValueError, match=pattern):
      abstract(model, shape)


def assert_sharded_matches_unsharded(
  make: Callable[..., nn.Module],
  shape: Sequence[int],
  devices: Sequence[jax.Device],
  axes: dict[str, int],
  num_classes: int = 2,
) -> None:
  """A model split over a mesh computes what it computes on one device.

  Compares the logits and the parameter gradients of a training-mode
  cross-entropy. 3-D models are built with `partition=("data",
  "spatial")`, so their activations are split over batch and depth as
  `models.from_config` does for a `spatial` mesh axis; 2-D models are only
  data-parallel.

  Args:
    make: `make(**kwargs)` builds the model; `partition` may be passed.
    shape: the input's shape, batch first.
    devices: the (fake CPU) devices of the mesh.
    axes: mesh axis sizes, e.g. `{"data": 2, "spatial": 4}`.
    num_classes: the model's number of classes.
  """
  from medseg_jax import sharding  # pylint: disable=g-import-not-at-top

  spatial_dims = len(shape) - 2
  x = jax.random.normal(jax.random.key(0), tuple(shape))
  labels = jax.random.randint(jax.random.key(1), x.shape[:-1], 0, num_classes)

  def forward_and_grads(model, variables, x, labels):
    def loss(params):
      logits, _ = model.apply(
        {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
      )
      return cross_entropy(logits, labels, num_classes), logits

    return jax.value_and_grad(loss, has_aux=True)(variables["params"])

  plain = make()
  variables, _ = init(plain, shape)
  expected = jit(lambda v, x, y: forward_and_grads(plain, v, x, y))(
    variables, x, labels
  )
  mesh = sharding.make_mesh(devices, axes=axes)
  kwargs = {"partition": ("data", "spatial")} if spatial_dims == 3 else {}
  sharded = make(**kwargs)
  batch = sharding.batch_sharding(mesh, spatial_dims=spatial_dims)
  with jax.set_mesh(mesh):
    got = jit(lambda v, x, y: forward_and_grads(sharded, v, x, y))(
      sharding.replicate(variables, mesh),
      jax.device_put(x, batch),
      jax.device_put(labels, batch),
    )
  assert len(got[0][1].sharding.device_set) == len(devices)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
    got,
    expected,
  )
