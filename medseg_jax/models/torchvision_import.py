"""Imports torchvision ResNet weights into `medseg_jax.models.resnet.ResNet`.

No weights are downloaded here: the caller brings a state dict, e.g. saved
with `torch.save(torchvision.models.resnet50(weights=...).state_dict(),
path)` on a machine that has torch, or converted to `.npz` there (`np.load`
returns a mapping that can be passed directly).

Typical use, to start a 1-channel `DeepLabV3(backbone="resnet50")` from
ImageNet weights:

  state = load_torch_state_dict("resnet50-11ad3fa6.pth")
  params, stats, report = import_resnet(state, depth=50, in_channels=1)
  print(report.summary())  # fc.weight, fc.bias unused.
  variables = model.init(key, x, train=False)
  variables = {
    "params": graft(variables["params"], params, "backbone"),
    "batch_stats": graft(variables["batch_stats"], stats, "backbone"),
  }

Inputs should then be normalised as for the ImageNet model (torchvision:
per-channel mean and std of RGB images in [0, 1]).

Name and layout mapping (torchvision -> `ResNet`):

  conv1.weight                    [O, I, kh, kw] -> conv1/kernel [kh, kw, I, O]
  bn1.weight, bn1.bias            -> params bn1/scale, bn1/bias
  bn1.running_mean, running_var   -> batch_stats bn1/mean, bn1/var
  layer{s}.{b}.conv{i}.weight     -> layer{s}_{b}/conv{i}/kernel
  layer{s}.{b}.bn{i}.*            -> layer{s}_{b}/bn{i}/*
  layer{s}.{b}.downsample.0.weight -> layer{s}_{b}/downsample_conv/kernel
  layer{s}.{b}.downsample.1.*     -> layer{s}_{b}/downsample_bn/*
  fc.weight, fc.bias, *.num_batches_tracked: not used (reported).

Both networks use batch-norm epsilon 1e-5 and the same symmetric padding, so
an imported ResNet in evaluation mode computes torchvision's features (up to
float rounding).
"""

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medseg_jax.models import resnet

# Flax leaf name -> torchvision suffix, per collection.
_LEAVES = {
  ("params", "kernel"): "weight",
  ("params", "scale"): "weight",
  ("params", "bias"): "bias",
  ("batch_stats", "mean"): "running_mean",
  ("batch_stats", "var"): "running_var",
}
_MODULES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}


@dataclasses.dataclass
class ImportReport:
  """What `import_resnet` mapped and what it left.

  Attributes:
    loaded: `(torchvision key, flax path)` pairs, e.g. `("layer1.0.conv1
      .weight", "params/layer1_0/conv1/kernel")`.
    unused: state-dict keys that were not mapped (for an ImageNet ResNet:
      `fc.weight`, `fc.bias` and the `num_batches_tracked` counters).
    missing: flax paths with no key in the state dict (only with
      `strict=False`; they are absent from the returned trees).
  """

  loaded: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  unused: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    """A short human-readable account, listing unused and missing keys."""
    counters = [k for k in self.unused if k.endswith("num_batches_tracked")]
    others = [k for k in self.unused if k not in counters]
    lines = [
      f"loaded {len(self.loaded)} arrays; {len(self.missing)} missing; "
      f"{len(self.unused)} unused ({len(counters)} num_batches_tracked)."
    ]
    lines += [f"  unused: {k}" for k in others]
    lines += [f"  missing: {k}" for k in self.missing]
    return "\n".join(lines)


def torchvision_key(collection: str, path: tuple[str, ...]) -> str:
  """The torchvision state-dict key of a `ResNet` variable.

  Args:
    collection: `"params"` or `"batch_stats"`.
    path: module names then the leaf name, e.g. `("layer1_0",
      "downsample_bn", "scale")`.

  Returns:
    E.g. `"layer1.0.downsample.1.weight"`.
  """
  *modules, leaf = path
  parts = []
  for name in modules:
    match = re.fullmatch(r"(layer\d)_(\d+)", name)
    if match:
      parts += [match.group(1), match.group(2)]
    else:
      parts.append(_MODULES.get(name, name))
  try:
    parts.append(_LEAVES[(collection, leaf)])
  except KeyError:
    raise ValueError(
      f"No torchvision name for {collection}/{'/'.join(path)}."
    ) from None
  return ".".join(parts)


def _abstract_resnet(depth: int, width: float, in_channels: int) -> Any:
  """Shapes of `ResNet(depth, width)` variables, without allocating them."""
  model = resnet.ResNet(depth=depth, width=width, norm="batch")
  x = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  return jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), x
  )


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def import_resnet(
  state_dict: Mapping[str, Any],
  depth: int,
  *,
  width: float = 1.0,
  in_channels: int | None = None,
  prefix: str = "",
  strict: bool = True,
) -> tuple[dict, dict, ImportReport]:
  """Maps a torchvision ResNet state dict onto `ResNet` variables.

  Every variable of `ResNet(depth, width, norm="batch")` is looked up by
  its torchvision name (see `torchvision_key`), converted to float32 and,
  for convolution kernels, transposed from PyTorch's `[O, I, kh, kw]` to
  Flax's `[kh, kw, I, O]`; its shape is then checked.

  Args:
    state_dict: torchvision names -> arrays (numpy arrays, or anything
      `np.asarray` accepts; see `load_torch_state_dict`).
    depth: 18, 34, 50, 101 or 152.
    width: the target's channel multiplier (1 for torchvision's models; the
      tests use narrow fakes).
    in_channels: input channels of the target model. None keeps the state
      dict's (3 for ImageNet). 1 with a 3-channel source sums `conv1` over
      its input channels, so that a grey image gives the response the RGB
      network gives to the same image replicated to three channels. Other
      mismatches raise.
    prefix: stripped from the state-dict keys before mapping, e.g.
      `"backbone."` for torchvision segmentation models or `"module."` for
      `DataParallel` checkpoints; keys without it are unused.
    strict: if True, a variable without a key raises; if False it is left
      out of the returned trees and listed in `report.missing` (`graft`
      then keeps its initial value).

  Returns:
    `(params, batch_stats, report)`: nested dicts of float32 numpy arrays
    with `ResNet`'s structure (the `backbone` subtrees of `FCN`,
    `DeepLabV3` and `DeepLabV3Plus`), and an `ImportReport`.

  Raises:
    KeyError: if `strict` and a variable has no key; the message names them.
    ValueError: if an array does not have the expected shape; the message
      names the state-dict key, the flax path and both shapes.
  """
  if depth not in resnet.DEPTHS:
    raise ValueError(
      f"Unknown ResNet depth {depth!r}; expected one of "
      f"{sorted(resnet.DEPTHS)}."
    )
  source = {
    key[len(prefix) :]: value
    for key, value in state_dict.items()
    if key.startswith(prefix)
  }
  unused = {key for key in state_dict if not key.startswith(prefix)}
  conv1 = source.get("conv1.weight")
  source_channels = None if conv1 is None else np.shape(conv1)[1]
  target_channels = in_channels or source_channels or 3
  shapes = _abstract_resnet(depth, width, target_channels)

  trees = {"params": {}, "batch_stats": {}}
  report = ImportReport()
  for collection in ("params", "batch_stats"):
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(
      shapes[collection]
    ):
      path = tuple(str(k.key) for k in key_path)
      flax_name = "/".join((collection, *path))
      key = torchvision_key(collection, path)
      if key not in source:
        report.missing.append(flax_name)
        continue
      value = np.asarray(source[key], dtype=np.float32)
      if path[-1] == "kernel" and value.ndim >= 3:
        value = np.transpose(value, (*range(2, value.ndim), 1, 0))
      if (
        path == ("conv1", "kernel")
        and value.ndim == 4
        and value.shape[2] != target_channels
      ):
        if target_channels != 1:
          raise ValueError(
            f"{prefix}{key}: has {value.shape[2]} input channels; converting "
            f"to {target_channels} is not supported (only to 1, by summing)."
          )
        value = value.sum(axis=2, keepdims=True)
      if value.shape != tuple(leaf.shape):
        raise ValueError(
          f"{prefix}{key}: shape {np.shape(source[key])} (as "
          f"{value.shape} in Flax layout) does not fit {flax_name} of shape "
          f"{tuple(leaf.shape)} in ResNet-{depth} with width {width}."
        )
      _set(trees[collection], path, value)
      report.loaded.append((prefix + key, flax_name))

  mapped = {key for key, _ in report.loaded}
  unused |= {prefix + key for key in source} - mapped
  report.unused = sorted(unused)
  if strict and report.missing:
    shown = ", ".join(report.missing[:5])
    more = len(report.missing) - 5
    raise KeyError(
      f"{len(report.missing)} ResNet-{depth} variables have no key in the "
      f"state dict (prefix {prefix!r}): {shown}"
      + (f" and {more} more" if more > 0 else "")
      + f"; e.g. {prefix}{_example_key(report.missing[0])} was expected."
    )
  return trees["params"], trees["batch_stats"], report


def _example_key(flax_name: str) -> str:
  collection, *path = flax_name.split("/")
  return torchvision_key(collection, tuple(path))


def graft(
  tree: Mapping[str, Any], subtree: Mapping[str, Any], prefix: str
) -> dict[str, Any]:
  """Returns a copy of `tree` with the leaves of `subtree` placed at `prefix`.

  Use it to put an imported backbone into a full model's variables, once
  for `params` and once for `batch_stats`. Leaves of `tree` under `prefix`
  that `subtree` lacks keep their values; nothing is mutated.

  Args:
    tree: e.g. `variables["params"]` of a `DeepLabV3`.
    subtree: e.g. the `params` returned by `import_resnet`.
    prefix: slash-separated path of the subtree in `tree`, e.g.
      `"backbone"`.

  Returns:
    The new tree, with `tree`'s structure and leaf dtypes.

  Raises:
    KeyError: if `prefix` or a path of `subtree` does not exist in `tree`.
    ValueError: if a leaf's shape differs; the message names its path.
  """
  parts = tuple(p for p in prefix.split("/") if p)

  def copy(node):
    if isinstance(node, Mapping):
      return {k: copy(v) for k, v in node.items()}
    return node

  new = copy(tree)
  target = new
  for i, name in enumerate(parts):
    if not isinstance(target, Mapping) or name not in target:
      raise KeyError(
        f"graft: {'/'.join(parts[: i + 1])!r} is not in the tree; top-level "
        f"keys: {sorted(tree)}."
      )
    target = target[name]

  for key_path, value in jax.tree_util.tree_leaves_with_path(subtree):
    path = tuple(str(k.key) for k in key_path)
    name = "/".join(parts + path)
    node = target
    for step in path[:-1]:
      if not isinstance(node, Mapping) or step not in node:
        raise KeyError(f"graft: {name} is not in the tree.")
      node = node[step]
    if not isinstance(node, Mapping) or path[-1] not in node:
      raise KeyError(f"graft: {name} is not in the tree.")
    old = node[path[-1]]
    if tuple(np.shape(value)) != tuple(np.shape(old)):
      raise ValueError(
        f"graft: {name} has shape {tuple(np.shape(old))} in the tree but "
        f"{tuple(np.shape(value))} in the subtree."
      )
    node[path[-1]] = jnp.asarray(value, dtype=old.dtype)
  return new


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch `.pth`/`.pt` state dict into numpy arrays.

  Needs torch, an optional extra that medseg_jax does not install. Loads
  with `weights_only=True` (tensors only, no arbitrary code). A checkpoint
  that wraps the weights in `{"state_dict": ...}` or `{"model": ...}` is
  unwrapped.

  Args:
    path: file path.

  Returns:
    Key -> float array; non-tensor entries are dropped.

  Raises:
    ImportError: if torch is not installed; says how to proceed.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
      "Reading a PyTorch checkpoint needs torch, an optional extra that "
      "medseg_jax does not install: `pip install torch`, or convert the "
      "state dict to .npz where torch is available, e.g. `np.savez(out, "
      "**{k: v.numpy() for k, v in state_dict.items()})`, and pass "
      "`np.load(out)` to import_resnet."
    ) from error
  state = torch.load(path, map_location="cpu", weights_only=True)
  for wrapper in ("state_dict", "model"):
    if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
      state = state[wrapper]
  return {
    key: value.detach().cpu().numpy()
    for key, value in state.items()
    if isinstance(value, torch.Tensor)
  }
