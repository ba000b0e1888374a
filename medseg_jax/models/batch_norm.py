"""Batch normalisation with a hand-written backward pass.

`BatchNorm` is a drop-in replacement for `flax.linen.BatchNorm` as this
codebase configures it (statistics over every axis but the last, learned
scale and shift, momentum-averaged running statistics). It has the same
variables under the same names (`params/{scale, bias}`, `batch_stats/{mean,
var}`), so checkpoints and the torchvision importer see no difference, and
computes the same function: biased variance by E[x^2] - E[x]^2 in float32
(clipped at 0), `(x - mean) * rsqrt(var + eps) * scale + bias`, and the
running statistics `m * running + (1 - m) * batch`.

What differs is the lowering of the training-mode pass:

* The backward pass is the closed form (`batch_norm_train`): two channel
  sums of the output gradient, then one elementwise pass, instead of what
  autodiff derives from the forward graph. Gradients agree with autodiff to
  float32 rounding (tests).
* On the CPU, the channel sums are matrix-vector products with a vector of
  ones, which XLA:CPU hands to its matmul kernels; its reduction loops over
  the leading axes of a channels-last array are several times slower. Other
  backends use plain sums. `lowering.choose` decides (`impl="auto"`);
  `lowering.channel_sums` holds both.

Together this makes a 2-D U-Net 16-128 train step on 8x128x128 about 40 ms
faster on the 2-core CPU (`benchmarks/train_throughput.py --profile`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax.models import cpu_kernels
from medseg_jax.models import lowering


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(
  x: jax.Array,
  scale: jax.Array,
  bias: jax.Array,
  epsilon: float,
  impl: str,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode batch norm over every axis of `x` but the last.

  Args:
    x: `[..., C]` input, any float dtype (computed in float32).
    scale: `f32[C]`.
    bias: `f32[C]`.
    epsilon: added to the variance.
    impl: `"dot"` or `"sum"` (see `lowering.channel_sums`).

  Returns:
    `(y, mean, var)`: the normalised `f32[..., C]` output and the batch mean
    and biased variance, `f32[C]` each. All three are differentiable.
  """
  y, mean, var, _ = _forward(x, scale, bias, epsilon, impl)
  return y, mean, var


def _forward(x, scale, bias, epsilon, impl):
  xf = x.astype(jnp.float32)
  n = xf.size // xf.shape[-1]
  mean = lowering.channel_sums(xf, impl) / n
  mean_sq = lowering.channel_sums(xf * xf, impl) / n
  var = jnp.maximum(mean_sq - mean * mean, 0.0)
  inv = jax.lax.rsqrt(var + epsilon)
  y = (xf - mean) * (inv * scale) + bias
  return y, mean, var, inv


def _fwd(x, scale, bias, epsilon, impl):
  y, mean, var, inv = _forward(x, scale, bias, epsilon, impl)
  return (y, mean, var), (x, mean, var, inv, scale)


def _bwd(epsilon, impl, residuals, cotangents):
  del epsilon
  x, mean, var, inv, scale = residuals
  dy, dmean, dvar = cotangents
  xf = x.astype(jnp.float32)
  n = xf.size // xf.shape[-1]
  dy_sum = lowering.channel_sums(dy, impl)
  # sum(dy * xhat) = inv * (sum(dy * x) - mean * sum(dy)).
  dy_xhat_sum = inv * (lowering.channel_sums(dy * xf, impl) - mean * dy_sum)
  dscale = dy_xhat_sum
  dbias = dy_sum
  centred = xf - mean
  # Through y: the closed form of d/dx of (x - mean(x)) * rsqrt(var(x) + eps)
  # with both statistics taken over the batch.
  dx = (scale * inv) * (dy - dy_sum / n - centred * (inv * dy_xhat_sum / n))
  # Through the returned statistics (zero when only `y` is used). The clip
  # at 0 passes no gradient where it is active.
  dvar = jnp.where(var > 0, dvar, 0.0)
  dx = dx + dmean / n + centred * (2.0 * dvar / n)
  return dx.astype(x.dtype), dscale, dbias


batch_norm_train.defvjp(_fwd, _bwd)


class BatchNorm(nn.Module):
  """Batch norm over every axis but the last; see the module docstring.

  Attributes:
    use_running_average: normalise with the running statistics (evaluation)
      instead of the batch's (training, which also updates them).
    momentum: running statistics decay, `running = m * running + (1 - m) *
      batch` (0.9 is PyTorch's momentum=0.1).
    epsilon: added to the variance.
    dtype: output dtype; `None` gives float32. The arithmetic is float32.
    impl: one of `lowering.BATCH_NORM_IMPLS`.
    relu: apply a ReLU to the output (`nn.relu(BatchNorm(...)(x))` with the
      same variables). On the CPU the training pass then runs both as one
      fused kernel where `lowering.choose` picks it (`cpu_kernels.py`).
  """

  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: jax.typing.DTypeLike | None = None
  impl: str = "auto"
  relu: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalises `f[..., C]`; returns the same shape in `dtype`."""
    features = x.shape[-1]
    running_mean = self.variable(
      "batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32)
    )
    running_var = self.variable(
      "batch_stats", "var", lambda: jnp.ones((features,), jnp.float32)
    )
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    dtype = jnp.float32 if self.dtype is None else self.dtype
    if self.use_running_average:
      inv = jax.lax.rsqrt(running_var.value + self.epsilon)
      y = (x.astype(jnp.float32) - running_mean.value) * (inv * scale) + bias
      return self._activate(y).astype(dtype)
    if (
      self.impl == "auto"
      and cpu_kernels.supports(x)
      and lowering.choose().batch_norm_kernel == "fused"
      and cpu_kernels.available()
    ):
      y, mean, var = cpu_kernels.batch_norm_train(
        x, scale, bias, self.epsilon, self.relu
      )
    else:
      y, mean, var = batch_norm_train(
        x, scale, bias, self.epsilon, lowering.batch_norm_impl_for(self.impl)
      )
      y = self._activate(y)
    if not self.is_initializing():
      m = self.momentum
      running_mean.value = m * running_mean.value + (1 - m) * (
        jax.lax.stop_gradient(mean)
      )
      running_var.value = m * running_var.value + (1 - m) * (
        jax.lax.stop_gradient(var)
      )
    return y.astype(dtype)

  def _activate(self, y: jax.Array) -> jax.Array:
    return nn.relu(y) if self.relu else y
