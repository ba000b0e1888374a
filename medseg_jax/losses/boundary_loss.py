"""Boundary loss on signed distance maps (Kervadec et al., 2019).

The distance maps are not computed here: they depend on the labels only,
so the input pipeline computes them on the host with scipy
(:mod:`medseg_jax.data.distance`) and they travel in the batch as
`batch["distance"]`; the trainer passes them as the `distance` argument.
"""

import jax
import jax.numpy as jnp

from medseg_jax.losses import segmentation


def boundary(
  logits: jax.typing.ArrayLike,
  labels: jax.typing.ArrayLike,
  mask: jax.typing.ArrayLike | None = None,
  *,
  distance: jax.typing.ArrayLike,
  include_background: bool = False,
) -> jax.Array:
  r"""Boundary loss per example (Kervadec et al., 2019).

  With `p = softmax(logits)` and `phi_c` the signed distance map of class
  `c` of the labels (negative inside the class, positive outside, see
  `medseg_jax.data.distance.signed_distance`), over the valid voxels `V`:

  .. math::
    \ell = \frac{1}{|V| \, |K|} \sum_{c \in K} \sum_{i \in V}
      \phi_{c}(i) \, p_{i,c}

  The loss is linear in `p`: its minimum over all predictions is reached
  by the ground truth itself (`p = 1` where `phi < 0`, `p = 0` where
  `phi > 0`), and probability put at distance `d` outside the true
  region costs `d`. It is not bounded below by 0; its value for a perfect
  prediction is `-mean(max(-phi, 0))`. Distances are in voxels (of the
  full-resolution patch, also in deep supervision), so the loss grows with
  the object sizes; the paper uses it with a regional loss and a weight
  that rises during training, e.g. `terms=[dict(name="generalized_dice",
  weight=1.0), dict(name="boundary", weight=0.01)]`. A class absent from
  an example has `phi_c = 0`, hence no boundary term.

  Example:

    >>> from medseg_jax.data.distance import signed_distance
    >>> labels = np.array([[[0, 0, 1, 1]]])            # [B=1, H=1, W=4]
    >>> distance = signed_distance(labels[0], 2)[None]  # [1, 1, 4, 2]
    >>> distance[0, 0, :, 1]
    array([ 2.,  1.,  0., -1.], dtype=float32)
    >>> boundary(20.0 * jax.nn.one_hot(labels, 2), labels, distance=distance)
    Array([-0.25], dtype=float32)

  Reference: H. Kervadec, J. Bouchtiba, C. Desrosiers, E. Granger, J.
  Dolz, I. Ben Ayed. "Boundary loss for highly unbalanced segmentation".
  MIDL 2019 (extended in Medical Image Analysis 67, 2021).
  https://arxiv.org/abs/1812.07032

  Args:
    logits: `f32[B, *S, C]` unnormalised scores.
    labels: `int[B, *S]`; used only for the shape checks (the labels
      enter through `distance`).
    mask: optional `[B, *S]`, nonzero where the voxel counts.
    distance: `f32[B, *S, C]` signed distance map of each class.
    include_background: whether class 0 enters the mean over classes.

  Returns:
    `f32[B]` per-example loss.

  Raises:
    ValueError: on shape mismatch.
  """
  logits, labels, mask = segmentation._prepare(logits, labels, mask, "boundary")
  segmentation._check_classes(logits, include_background, "boundary")
  distance = jnp.asarray(distance)
  if distance.shape != logits.shape:
    raise ValueError(
      f"boundary: distance must be f32[B, *S, C] = {logits.shape} like the "
      f"logits (one signed distance map per class), got {distance.shape}."
    )
  probs = jax.nn.softmax(logits, axis=-1)
  per_voxel = probs * distance.astype(probs.dtype)
  if not include_background:
    per_voxel = per_voxel[..., 1:]
  per_voxel = jnp.mean(per_voxel, axis=-1)
  return segmentation._voxel_mean(per_voxel, mask)
