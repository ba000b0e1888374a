"""Input-gradient attributions: saliency, SmoothGrad, Integrated Gradients.

Each returns an attribution per input value, `f32[B, *S, C]`, for the score
`S(x)` of a `targets.Target` (a class logit summed over a region fixed on
the unperturbed image). `heatmap` turns one into a map `f32[B, *S]` for
display. All are pure functions of `(model, variables, image, target)`,
jittable with the model and the options static, batched over examples,
2-D and 3-D. The many network evaluations of SmoothGrad and Integrated
Gradients run as device batches of `batch_size` copies stacked along the
batch axis (`batching.map_in_chunks`), not one by one.

References:

* K. Simonyan, A. Vedaldi, A. Zisserman. "Deep Inside Convolutional
  Networks: Visualising Image Classification Models and Saliency Maps".
  ICLR workshop 2014. https://arxiv.org/abs/1312.6034
* D. Smilkov, N. Thorat, B. Kim, F. Viegas, M. Wattenberg. "SmoothGrad:
  removing noise by adding noise". 2017. https://arxiv.org/abs/1706.03825
* M. Sundararajan, A. Taly, Q. Yan. "Axiomatic Attribution for Deep
  Networks". ICML 2017. https://arxiv.org/abs/1703.01365
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medseg_jax.explain import batching
from medseg_jax.explain import targets

RULES = ("gauss_legendre", "trapezoid", "riemann_middle")


def _grad_fn(model: nn.Module, variables: Any, target: targets.Target, region):
  """`x -> dS/dx`, per example (the examples are independent)."""

  def total(x):
    return targets.score_of(model, variables, x, target, region).sum()

  return jax.grad(total)


def _copies_grad(model, variables, target, region):
  """`x: f32[k, B, *S, C] -> dS/dx` of all `k * B` copies in one batch
  (each scored over its example's region; evaluation mode keeps the
  examples independent)."""

  def grad(copies):
    k = copies.shape[0]
    tiled = jnp.broadcast_to(region, (k, *region.shape))
    g = _grad_fn(model, variables, target, batching.stack_batch(tiled))
    return batching.unstack_batch(g(batching.stack_batch(copies)), k)

  return grad


def saliency(
  model: nn.Module,
  variables: Any,
  image: jax.typing.ArrayLike,
  target: targets.Target,
  *,
  magnitude: bool = False,
) -> jax.Array:
  """Vanilla gradient saliency: `dS/dx` (Simonyan et al. 2014).

  Args:
    model: a segmentation model, `f32[B, *S, C] -> f32[B, *S, K]` logits.
    variables: its variables (`params`, `batch_stats`).
    image: `f32[B, *S, C]`.
    target: the class and region scored.
    magnitude: return `|dS/dx|`.

  Returns:
    `f32[B, *S, C]`. For a model whose logits are linear in the image,
    `logits[v, c] = sum_u W[u, v, c] x[u] + b`, this is the sum of the
    weights `W[:, v, c]` over the region.
  """
  image = jnp.asarray(image, jnp.float32)
  region = targets.region_of(model, variables, image, target)
  grad = _grad_fn(model, variables, target, region)(image)
  return jnp.abs(grad) if magnitude else grad


def smoothgrad(
  model: nn.Module,
  variables: Any,
  image: jax.typing.ArrayLike,
  target: targets.Target,
  *,
  noise_level: float = 0.15,
  samples: int = 25,
  magnitude: bool = True,
  batch_size: int | None = 8,
  rng: jax.Array | None = None,
) -> jax.Array:
  """SmoothGrad: the mean gradient over noisy copies (Smilkov et al. 2017).

    g_i = dS/dx (x + n_i),   n_i ~ N(0, sigma^2),
    sigma = noise_level * (max(x) - min(x))      per example
    map = mean_i g_i,  or  sqrt(mean_i g_i^2) with `magnitude`

  (MONAI's `SmoothGrad` uses the same spread and magnitude rule.) The
  region stays the one of the clean image.

  Args:
    model, variables, image, target: as for `saliency`.
    noise_level: the noise standard deviation as a fraction of each
      example's intensity range.
    samples: number of noisy copies.
    magnitude: root mean square of the gradients instead of their mean.
    batch_size: noisy copies per network call (each call sees `batch_size
      * B` images); `None` evaluates all at once.
    rng: a `jax.random.key`; default `key(0)`.

  Returns:
    `f32[B, *S, C]`.
  """
  if samples < 1:
    raise ValueError(f"samples must be >= 1, got {samples}.")
  image = jnp.asarray(image, jnp.float32)
  rng = jax.random.key(0) if rng is None else rng
  region = targets.region_of(model, variables, image, target)
  grad = _copies_grad(model, variables, target, region)
  axes = tuple(range(1, image.ndim))
  span = image.max(axis=axes, keepdims=True) - image.min(
    axis=axes, keepdims=True
  )
  sigma = noise_level * span

  def chunk(keys):
    noise = jax.vmap(lambda key: jax.random.normal(key, image.shape))(keys)
    g = grad(image[None] + sigma[None] * noise)
    return g * g if magnitude else g

  keys = jax.random.split(rng, samples)
  mean = batching.map_in_chunks(chunk, keys, batch_size, unroll=True)
  mean = mean.mean(axis=0)
  return jnp.sqrt(mean) if magnitude else mean


def quadrature(steps: int, rule: str = "gauss_legendre"):
  """Nodes and weights of a rule for `int_0^1 f(a) da`, as NumPy arrays.

  `"gauss_legendre"` (exact for polynomials of degree `2 * steps - 1`;
  Captum's default), `"trapezoid"` (`steps` nodes including both ends) or
  `"riemann_middle"` (midpoints). The weights sum to 1.
  """
  if steps < 1 or (rule == "trapezoid" and steps < 2):
    raise ValueError(f"steps must be >= 1 (2 for trapezoid), got {steps}.")
  if rule == "gauss_legendre":
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2
  if rule == "trapezoid":
    nodes = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2
    return nodes, weights
  if rule == "riemann_middle":
    return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
  raise ValueError(f"Unknown rule {rule!r}; valid rules: {RULES}.")


def integrated_gradients(
  model: nn.Module,
  variables: Any,
  image: jax.typing.ArrayLike,
  target: targets.Target,
  *,
  baseline: float | jax.typing.ArrayLike = 0.0,
  steps: int = 32,
  rule: str = "gauss_legendre",
  batch_size: int | None = 8,
) -> jax.Array:
  """Integrated Gradients (Sundararajan et al. 2017).

    IG(x) = (x - x') * int_0^1 dS/dx (x' + a (x - x')) da

  with the integral replaced by a quadrature rule over `steps` points. The
  attributions are complete: `sum IG = S(x) - S(x')` (both scored over the
  region of `x`), up to the quadrature error, which falls as `steps`
  grows (`targets.score_of` gives both scores to check it).

  Args:
    model, variables, image, target: as for `saliency`.
    baseline: `x'`, a scalar or an array broadcastable to the image
      (e.g. the image blurred); default black (0).
    steps: points on the path.
    rule: one of `RULES` (see `quadrature`).
    batch_size: path points per network call (`None`: all at once).

  Returns:
    `f32[B, *S, C]`.
  """
  image = jnp.asarray(image, jnp.float32)
  baseline = jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), image.shape)
  nodes, weights = quadrature(steps, rule)
  region = targets.region_of(model, variables, image, target)
  grad = _copies_grad(model, variables, target, region)
  delta = image - baseline
  expand = (slice(None),) + (None,) * image.ndim

  def chunk(node_weight):
    node, weight = node_weight
    g = grad(baseline[None] + node[expand] * delta[None])
    return weight[expand] * g

  total = batching.map_in_chunks(
    chunk,
    (jnp.asarray(nodes, jnp.float32), jnp.asarray(weights, jnp.float32)),
    batch_size,
    unroll=True,
  )
  return delta * total.sum(axis=0)


def heatmap(attribution: jax.typing.ArrayLike) -> jax.Array:
  """`f32[B, *S, C] -> f32[B, *S]`: the largest `|value|` over channels
  (Simonyan et al.'s rule for multi-channel images)."""
  return jnp.abs(jnp.asarray(attribution)).max(axis=-1)
