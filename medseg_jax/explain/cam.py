"""Grad-CAM and Grad-CAM++ at a named layer, without model surgery.

A layer is named by its module path in the parameter tree, `/`-separated:
`"bottleneck"`, `"up_0"`, `"down_1/conv_0"`, ... (`layer_names` lists
them). Its output `A: f[B, *s, F]` and the gradient `G = dS/dA` of the
target score come from one forward and one backward pass: a Flax method
interceptor (`flax.linen.intercept_methods`) adds a zero perturbation
`delta` to that module's output, and `dS/d delta = dS/dA`. The model's
code is not touched.

  Grad-CAM:    w_k = mean_s G_k(s)
  Grad-CAM++:  a_k(s) = G^2 / (2 G^2 + sum_s' A_k(s') G^3),
               w_k = sum_s a_k(s) relu(G_k(s))
  map = relu(sum_k w_k A_k), resized (bi/trilinear) to the input size.

The maps are non-negative and left unnormalised (divide by the maximum for
display; `render` does). Grad-CAM++ uses the second- and third-power terms
of Chattopadhay et al.'s closed form for an exponential score, as MONAI's
`GradCAMpp` does.

References:

* R. R. Selvaraju et al. "Grad-CAM: Visual Explanations from Deep Networks
  via Gradient-based Localization". ICCV 2017.
  https://arxiv.org/abs/1610.02391
* A. Chattopadhay, A. Sarkar, P. Howlader, V. N. Balasubramanian.
  "Grad-CAM++: Improved Visual Explanations for Deep Convolutional
  Networks". WACV 2018. https://arxiv.org/abs/1710.11063
* K. Vinogradova, A. Dibrov, G. Myers. "Towards Interpretable Semantic
  Segmentation via Gradient-weighted Class Activation Mapping". AAAI 2020.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medseg_jax.explain import targets


def _variables(variables: Any) -> dict:
  return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def layer_shapes(
  model: nn.Module, variables: Any, image: jax.typing.ArrayLike
) -> dict[str, tuple[int, ...]]:
  """Every named layer with a spatial output, and that output's shape.

  Traced abstractly (`jax.eval_shape`, no computation): the model runs
  with `capture_intermediates=True` and every submodule whose `__call__`
  returns one array of the input's rank (`f[B, *s, F]`) is kept.

  Returns:
    `{"down_0": (B, H, W, F), "down_0/conv_0": ..., ...}` in call order.
  """
  image = jax.ShapeDtypeStruct(jnp.shape(image), jnp.float32)
  rank = len(image.shape)

  def run(v, x):
    return model.apply(
      v,
      x,
      train=False,
      capture_intermediates=True,
      mutable=["intermediates"],
    )

  _, state = jax.eval_shape(run, _variables(variables), image)
  found = {}

  def walk(tree, path):
    for key, value in tree.items():
      if key == "__call__":
        if path and len(value) == 1 and hasattr(value[0], "shape"):
          if len(value[0].shape) == rank:
            found["/".join(path)] = tuple(value[0].shape)
      elif isinstance(value, dict):
        walk(value, (*path, key))

  walk(state.get("intermediates", {}), ())
  return found


def layer_names(
  model: nn.Module, variables: Any, image: jax.typing.ArrayLike
) -> tuple[str, ...]:
  """The layer names `gradcam` accepts for this model and input shape."""
  return tuple(layer_shapes(model, variables, image))


def default_layer(names: tuple[str, ...]) -> str:
  """`"bottleneck"` where the model has one (Seg-Grad-CAM's choice for a
  U-Net), else the last layer with a spatial output before the head."""
  if "bottleneck" in names:
    return "bottleneck"
  tops = [n for n in names if "/" not in n and n != "head"]
  return (tops or list(names))[-1]


def activation_and_gradient(
  model: nn.Module,
  variables: Any,
  image: jax.typing.ArrayLike,
  target: targets.Target,
  layer: str,
) -> tuple[jax.Array, jax.Array]:
  """The output `A` of `layer` and `dS/dA`, both `f32[B, *s, F]`.

  Raises:
    ValueError: for an unknown layer; the message lists the valid names.
  """
  image = jnp.asarray(image, jnp.float32)
  shapes = layer_shapes(model, variables, image)
  if layer not in shapes:
    raise ValueError(
      f"Unknown layer {layer!r} for {type(model).__name__}; valid layers: "
      f"{list(shapes)}."
    )
  path = tuple(layer.split("/"))
  variables = _variables(variables)

  def scored(delta):
    captured = []

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if (
        not captured
        and context.method_name == "__call__"
        and tuple(context.module.path) == path
      ):
        out = out + delta.astype(out.dtype)
        captured.append(out)
      return out

    with nn.intercept_methods(interceptor):
      logits = model.apply(variables, image, train=False).astype(jnp.float32)
    region = targets.region_mask(logits, target)
    total = targets.score(logits, region, target).sum()
    return total, captured[0].astype(jnp.float32)

  delta = jnp.zeros(shapes[layer], jnp.float32)
  grad, activation = jax.grad(scored, has_aux=True)(delta)
  return activation, grad


def _to_input_size(cam: jax.Array, spatial: tuple[int, ...]) -> jax.Array:
  if tuple(cam.shape[1:]) == spatial:
    return cam
  return jax.image.resize(
    cam, (cam.shape[0], *spatial), method="linear", antialias=False
  )


def gradcam(
  model: nn.Module,
  variables: Any,
  image: jax.typing.ArrayLike,
  target: targets.Target,
  *,
  layer: str | None = None,
) -> jax.Array:
  """Grad-CAM (Selvaraju et al. 2017) for a segmentation target.

  Args:
    model: a segmentation model, `f32[B, *S, C] -> f32[B, *S, K]` logits.
    variables: its variables.
    image: `f32[B, *S, C]`.
    target: the class and region scored.
    layer: a name of `layer_names` (default: `default_layer`).

  Returns:
    `f32[B, *S]`, non-negative.
  """
  image = jnp.asarray(image, jnp.float32)
  layer = layer or default_layer(layer_names(model, variables, image))
  act, grad = activation_and_gradient(model, variables, image, target, layer)
  axes = tuple(range(1, act.ndim - 1))
  weights = grad.mean(axis=axes, keepdims=True)
  cam = jax.nn.relu((weights * act).sum(axis=-1))
  return _to_input_size(cam, tuple(image.shape[1:-1]))


def gradcam_pp(
  model: nn.Module,
  variables: Any,
  image: jax.typing.ArrayLike,
  target: targets.Target,
  *,
  layer: str | None = None,
) -> jax.Array:
  """Grad-CAM++ (Chattopadhay et al. 2018); arguments as for `gradcam`.

  Returns:
    `f32[B, *S]`, non-negative.
  """
  image = jnp.asarray(image, jnp.float32)
  layer = layer or default_layer(layer_names(model, variables, image))
  act, grad = activation_and_gradient(model, variables, image, target, layer)
  axes = tuple(range(1, act.ndim - 1))
  g2 = grad * grad
  g3 = g2 * grad
  denominator = 2 * g2 + act.sum(axis=axes, keepdims=True) * g3
  denominator = jnp.where(denominator != 0, denominator, 1.0)
  alpha = g2 / denominator
  weights = (alpha * jax.nn.relu(grad)).sum(axis=axes, keepdims=True)
  cam = jax.nn.relu((weights * act).sum(axis=-1))
  return _to_input_size(cam, tuple(image.shape[1:-1]))
