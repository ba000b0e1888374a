"""Surface metrics on the host: Hausdorff distances, ASSD, surface Dice.

Per case and per class, with voxel spacing in mm (anisotropic allowed),
`surface_scores` compares the surface of the predicted mask with the
surface of the ground-truth mask and returns

* `hd95`: the 95th-percentile Hausdorff distance (mm),
* `hd`: the maximum Hausdorff distance (mm),
* `assd`: the average symmetric surface distance (mm),
* `nsd`: the normalised surface Dice at a tolerance in mm (in [0, 1]).

Overlap metrics (Dice, IoU, ...) are in `medseg_jax.metrics.overlap`; they
run on device from confusion counts, these run on the host (numpy/scipy)
because they need distance transforms.

Definitions
-----------

Surface. The surface `∂A` of a binary mask `A` is the set of voxels of `A`
that have at least one face neighbour (2 per axis: 4 in 2-D, 6 in 3-D)
outside `A` or outside the image: `∂A = A & ~erode(A)`, where `erode` is
`scipy.ndimage.binary_erosion` with the face-connected ("cross")
structuring element `generate_binary_structure(ndim, 1)` and
`border_value=0`. A non-empty mask always has a non-empty surface. Points
are voxel centres, at `index * spacing` mm.

Directed distances. For every voxel `x` of `∂P` (prediction), `d(x, ∂G)`
is the Euclidean distance in mm to the nearest voxel of `∂G` (ground
truth), and vice versa: two sets `D_PG` (one value per voxel of `∂P`) and
`D_GP` (one per voxel of `∂G`). A voxel on both surfaces has distance 0.

* HD95 = max(P95(D_PG), P95(D_GP)): the larger of the two directed 95th
  percentiles, each by linear interpolation between order statistics
  (`np.percentile`'s default, `torch.quantile`'s default).
* HD = max(max D_PG, max D_GP).
* ASSD = (sum D_PG + sum D_GP) / (|∂P| + |∂G|): the mean of the union of
  both sets, so each surface voxel weighs the same.
* NSD(τ) = (#{D_PG <= τ} + #{D_GP <= τ}) / (|∂P| + |∂G|): the share of
  surface voxels, of both surfaces together, within τ mm of the other
  surface (Nikolov et al., "Clinically applicable segmentation of head and
  neck anatomy for radiotherapy", JMIR 2021).

These are the definitions of MONAI 1.6 (`compute_hausdorff_distance` with
`percentile=95`, `compute_average_surface_distance(symmetric=True)`,
`compute_surface_dice` with `use_subvoxels=False`): same surfaces, same
distances, same percentile; our values match MONAI's to float32 precision
(MONAI returns float32). Note that HD95 is *not* the 95th percentile of the
union `D_PG ∪ D_GP`; both MONAI and DeepMind's `surface-distance` take the
maximum of the two directed percentiles, and so do we.

DeepMind's `surface-distance` (`compute_surface_distances`,
`compute_robust_hausdorff`, `compute_surface_dice_at_tolerance`) differs:
its surface elements sit on the voxel corners (the marching-cubes-like
boundary between voxels) and are weighted by their area, and its
percentile is the first element whose cumulative area reaches the
percentile (no interpolation). On smooth shapes its HD95 and HD agree with
ours to within a voxel, its ASSD is smaller by up to half a voxel and its
NSD larger by up to ~0.1 (tests/metrics/surface_test.py stores both
libraries' values); on small jagged masks the two can differ by several
voxels.

Empty-set policy
----------------

Per case and class:

====================================  =====  ====  =====  ===
case                                  HD95   HD    ASSD   NSD
====================================  =====  ====  =====  ===
ground truth empty, prediction empty  0      0     0      1
exactly one of them empty             NaN    NaN   NaN    0
both non-empty                        value  value value  value
====================================  =====  ====  =====  ===

Both empty is a perfect answer (as for Dice in `overlap`). When exactly one
is empty the distances are not defined: they are NaN (not inf, so that
tables stay finite) and NSD is 0. Average with `np.nanmean`, which leaves
such cases out of the distance means, and report how many cases were
defined; the miss is still penalised by Dice, NSD and sensitivity. A
caller that wants a penalty in the distance means instead can replace NaN
by e.g. the image diagonal in mm. Classes that were not asked for (see
`classes`) are NaN in every metric.

Speed
-----

Per class the two maps are cropped to the bounding box of the class in the
prediction and the ground truth together (found for all classes in one
pass per map by `scipy.ndimage.find_objects`). Nothing outside that box is
of the class, so the crop changes no surface and no distance: erosion
treats the outside as background, and the nearest-surface distances are
exact whatever the box. The directed distances are then computed either
from a Euclidean distance transform of each surface's complement on the
crop (`scipy.ndimage.distance_transform_edt` with `sampling=spacing`, read
at the other surface's voxels), whose cost grows with the crop's volume,
or from nearest-neighbour queries in a k-d tree over the surface voxels'
coordinates in mm (`scipy.spatial.cKDTree`), whose cost grows with the
number of surface voxels. Both are exact and give the same values;
`method="auto"` picks the cheaper one per class: the transform when the
crop has few voxels per surface voxel (small compact structures), the tree
otherwise (large organs, thin or scattered structures in a large box).
"""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy import spatial

SURFACE_KEYS = ("hd95", "hd", "assd", "nsd")
METHODS = ("auto", "edt", "kdtree")

# `method="auto"` uses the distance transform when the crop has at most this
# many voxels per surface voxel (of both surfaces). Measured on CPU with
# scipy 1.17 on spheres and tubes: the transform costs as much per crop voxel
# as building and querying the k-d tree costs per ~10 surface voxels, so it
# wins only for small compact crops (where both are fast anyway).
_EDT_VOXELS_PER_SURFACE_VOXEL = 10.0

_Box = tuple[slice, ...]


def surface_voxels(mask: np.ndarray) -> np.ndarray:
  """The surface of a binary mask: its voxels with a face neighbour outside.

  `∂A = A & ~erode(A)` with the face-connected structuring element and
  the outside of the array counted as background (see the module
  docstring).

  Example:

    >>> surface_voxels(np.ones((3, 4), bool)).astype(int)
    array([[1, 1, 1, 1],
           [1, 0, 0, 1],
           [1, 1, 1, 1]])

  Args:
    mask: `bool[*S]` binary mask, any number of dimensions.

  Returns:
    `bool[*S]`, true on the surface voxels.
  """
  mask = np.asarray(mask, dtype=bool)
  structure = ndimage.generate_binary_structure(mask.ndim, 1)
  eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
  return mask & ~eroded


def _check_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
  spacing = np.asarray(spacing, dtype=np.float64).reshape(-1)
  if spacing.shape != (ndim,):
    raise ValueError(
      f"spacing must give one value per axis ({ndim}), got {spacing.shape[0]}."
    )
  if not np.all(np.isfinite(spacing) & (spacing > 0)):
    raise ValueError(f"spacing must be positive and finite, got {spacing}.")
  return spacing


def _edt_distances(
  features: np.ndarray, queries: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
  """Distances (mm) from each `queries` voxel to the nearest `features`
  voxel, from the feature transform of `~features`. Only the nearest
  feature's index is computed densely; the distances are taken at the
  query voxels alone."""
  nearest = ndimage.distance_transform_edt(
    ~features, sampling=spacing, return_distances=False, return_indices=True
  )  # i32[ndim, *S]
  where = np.nonzero(queries)
  offsets = nearest[(slice(None), *where)] - np.stack(where)  # [ndim, N]
  offsets = offsets * spacing[:, None]
  return np.sqrt(np.einsum("kn,kn->n", offsets, offsets))


def _kdtree_distances(
  features: np.ndarray, queries: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
  """Same as `_edt_distances`, by nearest-neighbour queries in a k-d tree
  over the feature voxels' coordinates in mm."""
  tree = spatial.cKDTree(np.argwhere(features) * spacing, leafsize=32)
  return tree.query(np.argwhere(queries) * spacing, k=1)[0]


def surface_distances(
  pred: np.ndarray,
  label: np.ndarray,
  spacing: Sequence[float],
  *,
  method: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
  """Directed surface distances between two non-empty binary masks.

  Crop the masks to their common bounding box first (as `surface_scores`
  does); the result does not depend on the crop.

  Example:

    >>> pred = np.zeros((1, 5), bool); pred[0, 1:3] = True
    >>> label = np.zeros((1, 5), bool); label[0, 2:4] = True
    >>> surface_distances(pred, label, spacing=(1.0, 2.0))
    (array([2., 0.]), array([0., 2.]))

  Args:
    pred: `bool[*S]` predicted mask, not empty.
    label: `bool[*S]` ground-truth mask, not empty.
    spacing: voxel size in mm per axis, in array axis order.
    method: `"edt"` (distance transform), `"kdtree"` (nearest-neighbour
      queries) or `"auto"` (the cheaper of the two; all give the same
      values).

  Returns:
    `(d_pred_to_label, d_label_to_pred)`: `f64[|∂P|]` distances (mm) from
    each surface voxel of `pred` to the surface of `label` and
    `f64[|∂G|]` the other way, each in C order of the voxels.

  Raises:
    ValueError: on mismatched shapes, bad spacing, an unknown method or an
      empty mask.
  """
  pred = np.asarray(pred, dtype=bool)
  label = np.asarray(label, dtype=bool)
  if pred.shape != label.shape:
    raise ValueError(
      f"pred and label must have the same shape, got {pred.shape} and "
      f"{label.shape}."
    )
  spacing = _check_spacing(spacing, pred.ndim)
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  if not pred.any() or not label.any():
    raise ValueError("surface_distances needs two non-empty masks.")
  surf_p = surface_voxels(pred)
  surf_g = surface_voxels(label)
  if method == "auto":
    num_surface = np.count_nonzero(surf_p) + np.count_nonzero(surf_g)
    use_edt = pred.size <= _EDT_VOXELS_PER_SURFACE_VOXEL * num_surface
    method = "edt" if use_edt else "kdtree"
  distances = _edt_distances if method == "edt" else _kdtree_distances
  out = []
  for mine, other in ((surf_p, surf_g), (surf_g, surf_p)):
    # Voxels on both surfaces are at distance 0: query only the others.
    alone = mine & ~other
    d = np.zeros(np.count_nonzero(mine))
    if alone.any():
      # C order of `alone` is C order of `mine` with the shared voxels out.
      d[~other[mine]] = distances(other, alone, spacing)
    out.append(d)
  return out[0], out[1]


def _union_box(a: _Box | None, b: _Box | None) -> _Box | None:
  if a is None or b is None:
    return a if b is None else b
  return tuple(
    slice(min(x.start, y.start), max(x.stop, y.stop))
    for x, y in zip(a, b, strict=True)
  )


def _boxes(
  volume: np.ndarray, classes: Sequence[int]
) -> dict[int, _Box | None]:
  """Bounding box of each class in an integer map (None if absent)."""
  boxes: dict[int, _Box | None] = {}
  foreground = [c for c in classes if c > 0]
  if foreground:
    # One pass for all foreground classes; values <= 0 are ignored.
    found = ndimage.find_objects(volume, max_label=max(foreground))
    boxes.update({c: found[c - 1] for c in foreground})
  if 0 in classes:
    found = ndimage.find_objects((volume == 0).view(np.uint8))
    boxes[0] = found[0] if found else None
  return boxes


def _scores(
  d_pg: np.ndarray, d_gp: np.ndarray, tolerance: float
) -> tuple[float, float, float, float]:
  hd95 = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
  hd = max(d_pg.max(), d_gp.max())
  num = d_pg.size + d_gp.size
  assd = (d_pg.sum() + d_gp.sum()) / num
  within = np.count_nonzero(d_pg <= tolerance)
  within += np.count_nonzero(d_gp <= tolerance)
  return float(hd95), float(hd), float(assd), within / num


def surface_scores(
  pred: np.ndarray,
  label: np.ndarray,
  num_classes: int,
  spacing: Sequence[float],
  *,
  tolerance_mm: float | Sequence[float] = 1.0,
  classes: Sequence[int] | None = None,
  method: str = "auto",
) -> dict[str, np.ndarray]:
  """Per-class surface metrics of one case, in float64 on the host.

  HD95, HD, ASSD and NSD as defined in the module docstring, with its
  empty-set policy. A voxel belongs to class `c` in the prediction if
  `pred == c` and in the ground truth if `label == c`; other values (e.g.
  an ignore label 255) belong to no class.

  Example:

    >>> label = np.zeros((8, 8), np.int32); label[2:6, 2:6] = 1
    >>> pred = np.roll(label, 1, axis=0)   # shifted by one row
    >>> scores = surface_scores(pred, label, 2, spacing=(3.0, 1.0))
    >>> scores["hd95"], scores["nsd"]
    (array([nan, 3.]), array([nan, 0.66666667]))

  Args:
    pred: `int[*S]` predicted class ids (2-D, 3-D or any rank).
    label: `int[*S]` ground-truth class ids.
    num_classes: number of classes `C`, background included.
    spacing: voxel size in mm per axis, in array axis order (e.g. the
      example's `spacing`).
    tolerance_mm: NSD tolerance τ in mm, one value or one per class.
    classes: the classes to score; default all but the background (class
      0), as its surface is mostly the image border. Classes left out are
      NaN in every metric.
    method: how distances are computed, `"auto"`, `"edt"` or `"kdtree"`
      (see `surface_distances`; all give the same values).

  Returns:
    Dict with keys `hd95`, `hd`, `assd` (mm) and `nsd`, each `f64[C]`.

  Raises:
    ValueError: on mismatched shapes, non-integer inputs, bad spacing,
      tolerance or classes.
  """
  pred = np.asarray(pred)
  label = np.asarray(label)
  if pred.shape != label.shape or pred.ndim < 1:
    raise ValueError(
      "surface_scores: pred and label must both be int[*S] with the same "
      f"shape, got {pred.shape} and {label.shape}."
    )
  for name, x in (("pred", pred), ("label", label)):
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(
        f"surface_scores: {name} must hold integer class ids, got dtype "
        f"{x.dtype}."
      )
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  spacing = _check_spacing(spacing, pred.ndim)
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  tolerance = np.broadcast_to(
    np.asarray(tolerance_mm, dtype=np.float64), (num_classes,)
  )
  if not np.all(np.isfinite(tolerance) & (tolerance >= 0)):
    raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}.")
  if classes is None:
    classes = range(1, num_classes)
  classes = sorted({int(c) for c in classes})
  if any(c < 0 or c >= num_classes for c in classes):
    raise ValueError(f"classes must lie in [0, {num_classes}), got {classes}.")

  out = {key: np.full(num_classes, np.nan) for key in SURFACE_KEYS}
  boxes_p = _boxes(pred, classes)
  boxes_g = _boxes(label, classes)
  for c in classes:
    box_p, box_g = boxes_p[c], boxes_g[c]
    if box_p is None and box_g is None:
      values = (0.0, 0.0, 0.0, 1.0)
    elif box_p is None or box_g is None:
      values = (np.nan, np.nan, np.nan, 0.0)
    else:
      box = _union_box(box_p, box_g)
      d_pg, d_gp = surface_distances(
        pred[box] == c, label[box] == c, spacing, method=method
      )
      values = _scores(d_pg, d_gp, tolerance[c])
    for key, value in zip(SURFACE_KEYS, values, strict=True):
      out[key][c] = value
  return out


def surface_scores_batch(
  pred: np.ndarray,
  label: np.ndarray,
  num_classes: int,
  spacing: Sequence[float] | np.ndarray,
  **kwargs,
) -> dict[str, np.ndarray]:
  """`surface_scores` for a batch of cases, one spacing per case or shared.

  Args:
    pred: `int[B, *S]` predicted class ids.
    label: `int[B, *S]` ground-truth class ids.
    num_classes: number of classes `C`, background included.
    spacing: `f[ndim]` shared by all cases, or `f[B, ndim]` per case.
    **kwargs: `tolerance_mm`, `classes` and `method` of `surface_scores`.

  Returns:
    Dict with keys `hd95`, `hd`, `assd` and `nsd`, each `f64[B, C]`.
  """
  pred = np.asarray(pred)
  label = np.asarray(label)
  if pred.shape != label.shape or pred.ndim < 2:
    raise ValueError(
      "surface_scores_batch: pred and label must both be int[B, *S] with "
      f"the same shape, got {pred.shape} and {label.shape}."
    )
  spacing = np.asarray(spacing, dtype=np.float64)
  if spacing.ndim == 1:
    spacing = np.broadcast_to(spacing, (pred.shape[0], spacing.shape[0]))
  if spacing.ndim != 2 or spacing.shape[0] != pred.shape[0]:
    raise ValueError(
      "surface_scores_batch: spacing must be [ndim] or [B, ndim], got shape "
      f"{spacing.shape} for a batch of {pred.shape[0]}."
    )
  cases = [
    surface_scores(p, g, num_classes, s, **kwargs)
    for p, g, s in zip(pred, label, spacing, strict=True)
  ]
  return {key: np.stack([c[key] for c in cases]) for key in SURFACE_KEYS}
