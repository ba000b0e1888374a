"""Topology-aware loss: soft clDice with a differentiable soft skeleton.

Same conventions as :mod:`medseg_jax.losses.segmentation`: channels-last
logits `f32[B, *S, C]` (`S` of rank 2 or 3), integer labels `int[B, *S]`,
an optional mask, one value per example.
"""

import jax
import jax.numpy as jnp
from jax import lax

from medseg_jax.losses import segmentation


def _pool(x: jax.Array, window: tuple[int, ...], reduce_max: bool) -> jax.Array:
  """Stride-1, same-size max (or min) pooling over the spatial axes of
  `x: f32[B, *S, C]`; the outside counts as -inf (+inf for min), so the
  image border neither dilates nor erodes anything."""
  dims = (1, *window, 1)
  pad = [(0, 0)] + [((w - 1) // 2, (w - 1) // 2) for w in window] + [(0, 0)]
  if reduce_max:
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, (1,) * x.ndim, pad)
  return lax.reduce_window(x, jnp.inf, lax.min, dims, (1,) * x.ndim, pad)


def soft_erode(x: jax.Array) -> jax.Array:
  """Soft erosion: the minimum over the cross-shaped neighbourhood (the
  voxel and its 2d face neighbours), as the min of 1-D minimum filters of
  width 3 along each spatial axis. `x: f32[B, *S, C]` in `[0, 1]`."""
  d = x.ndim - 2
  out = None
  for axis in range(d):
    window = tuple(3 if a == axis else 1 for a in range(d))
    pooled = _pool(x, window, reduce_max=False)
    out = pooled if out is None else jnp.minimum(out, pooled)
  return out


def soft_dilate(x: jax.Array) -> jax.Array:
  """Soft dilation: the maximum over the 3^d neighbourhood."""
  return _pool(x, (3,) * (x.ndim - 2), reduce_max=True)


def soft_skeleton(x: jax.Array, iterations: int = 3) -> jax.Array:
  r"""Differentiable soft skeleton by iterated min/max pooling.

  With erosion `E` (min pooling), dilation (max pooling) and opening
  `O = dilate(E(.))`:

  .. math::
    S_0 = \mathrm{relu}(x - O(x)), \quad
    S_{k} = S_{k-1} + \mathrm{relu}(\delta_k - S_{k-1} \delta_k), \quad
    \delta_k = \mathrm{relu}(E^k(x) - O(E^k(x)))

  for `k = 1 .. iterations`. For a binary input this is the morphological
  skeleton (Lantuejoul's formula) of structures up to about `iterations`
  voxels in radius; thicker structures keep only their outer layers.
  Values stay in `[0, 1]` for inputs in `[0, 1]`.

  Reference: S. Shit et al., "clDice - a Novel Topology-Preserving Loss
  Function for Tubular Structure Segmentation", CVPR 2021, Algorithm 1.

  Args:
    x: `f32[B, *S, C]` soft masks in `[0, 1]`, `S` of rank 2 or 3.
    iterations: number of erosions `k >= 0`.

  Returns:
    `f32[B, *S, C]` the soft skeleton of each channel.
  """
  if x.ndim not in (4, 5):
    raise ValueError(
      f"soft_skeleton: x must be [B, *S, C] with S of rank 2 or 3, got "
      f"shape {x.shape}."
    )
  if iterations < 0 or int(iterations) != iterations:
    raise ValueError(
      f"soft_skeleton: iterations must be an integer >= 0, got {iterations}."
    )

  def layer(y):
    return jax.nn.relu(y - soft_dilate(soft_erode(y)))

  skeleton = layer(x)
  for _ in range(int(iterations)):
    x = soft_erode(x)
    delta = layer(x)
    skeleton = skeleton + jax.nn.relu(delta - skeleton * delta)
  return skeleton


def cldice(
  logits: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  mask: jax.typing.ArrayLike | None = None,
  *,
  iterations: int = 3,
  include_background: bool = False,
  smooth: float = 1.0,
) -> jax.Array:
  r"""Soft clDice loss per example (Shit et al., 2021), 2-D and 3-D.

  With `P = softmax(logits)` and `L = one_hot(labels)` per class, and
  `S_P`, `S_L` their soft skeletons (`soft_skeleton`):

  .. math::
    T_{prec} = \frac{\sum S_P L + s}{\sum S_P + s}, \quad
    T_{sens} = \frac{\sum S_L P + s}{\sum S_L + s}, \quad
    \ell = 1 - \frac{1}{|K|} \sum_{c \in K}
      \frac{2 T_{prec} T_{sens}}{T_{prec} + T_{sens}}

  Topology precision is the share of the predicted skeleton that lies in
  the true mask; topology sensitivity the share of the true skeleton that
  is covered by the prediction. A prediction that breaks a tube misses
  part of the true skeleton and is penalised even when the volume overlap
  is nearly perfect. The loss lies in `[0, 1]` and is ~0 for a perfect
  prediction; the paper combines it with soft Dice, e.g. in a config
  `terms=[dict(name="dice", weight=0.5), dict(name="cldice",
  weight=0.5)]`.

  Masked voxels are zeroed in both `P` and `L` before skeletonisation, so
  nothing under the mask changes the loss (the mask's border does act as
  an object border).

  Example:

    >>> labels = jnp.zeros((1, 9, 9), jnp.int32).at[:, 4, :].set(1)
    >>> cldice(40.0 * jax.nn.one_hot(labels, 2), labels)  # ~0
    Array([0.], dtype=float32)

  Reference: S. Shit, J. C. Paetzold, A. Sekuboyina, I. Ezhov, A. Unger,
  A. Zhylka, J. P. W. Pluim, U. Bauer, B. H. Menze. "clDice - a Novel
  Topology-Preserving Loss Function for Tubular Structure Segmentation".
  CVPR 2021. https://arxiv.org/abs/2003.07311

  Args:
    logits: `f32[B, *S, C]` unnormalised scores, `S` of rank 2 or 3.
    labels: `int[B, *S]` class ids in `[0, C)` (any value where masked).
    mask: optional `[B, *S]`, nonzero where the voxel counts.
    iterations: soft-skeleton iterations (at least the largest radius of
      the tubes, in voxels; the paper's code uses 3 to 10).
    include_background: whether class 0 enters the mean over classes.
    smooth: additive smoothing `s > 0` (the paper's code uses 1).

  Returns:
    `f32[B]` per-example loss.
  """
  logits, labels, mask = segmentation._prepare(logits, labels, mask, "cldice")
  segmentation._check_classes(logits, include_background, "cldice")
  if logits.ndim not in (4, 5):
    raise ValueError(
      f"cldice: logits must be [B, *S, C] with S of rank 2 or 3, got shape "
      f"{logits.shape}."
    )
  if smooth <= 0:
    raise ValueError(f"cldice: smooth must be > 0, got {smooth}.")
  probs, targets = segmentation._probs_and_targets(logits, labels, mask)
  if not include_background:
    probs, targets = probs[..., 1:], targets[..., 1:]
  skel_pred = soft_skeleton(probs, iterations)
  skel_true = soft_skeleton(targets, iterations)
  axes = tuple(range(1, probs.ndim - 1))
  precision = (jnp.sum(skel_pred * targets, axis=axes) + smooth) / (
    jnp.sum(skel_pred, axis=axes) + smooth
  )
  sensitivity = (jnp.sum(skel_true * probs, axis=axes) + smooth) / (
    jnp.sum(skel_true, axis=axes) + smooth
  )
  score = 2.0 * precision * sensitivity / (precision + sensitivity)
  return 1.0 - jnp.mean(score, axis=-1)
