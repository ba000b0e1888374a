"""Segmentation models and the name -> constructor registry.

Configs name a model (`config.model.name = "unet"`) and pass its sizes as
keyword arguments; `get_model` resolves the name through `MODELS`, the one
place where names are defined:

  >>> model = get_model("unet", num_classes=2, features=(16, 32, 64))

Adding a model:

1. One file, `models/<name>.py`, holding a Flax module with the fields every
   model shares: `num_classes` (logit channels), `spatial_dims` (2 or 3),
   `in_channels` (checked when set, `None` accepts any) and `dtype` (the
   computation dtype; parameters and logits stay float32). Call it as
   `model(x, train=...)` on channels-last `f32[B, *S, C]`.
2. An entry in `MODELS` below; the name is what configs write.
3. Build its convolutions wider than 1^d and its poolings from
   `layers.Conv` (or `layers.conv`) and `layers.max_pool`, its norms with
   `layers.make_norm`, not from `nn.Conv`/`nn.max_pool`, so that the CPU
   lowering (`models/lowering.py`: depth-stacked 3-D convolutions,
   index-routed pooling, matvec batch-norm sums) applies to it too.
4. A test file `tests/models/<name>_test.py` built on
   `tests/models/model_testing.py` (abstract shapes, a parameter count
   checked against the paper or a reference implementation, finite
   training gradients, 2-D and 3-D where supported), and its smallest
   arguments in `TINY_KWARGS` of `tests/models/registry_test.py`.
5. A CPU-sized preset in `configs/zoo.py` (`MODELS` there), so that
   `configs/zoo.py:model=<name>,runlocal` trains it in seconds.
6. A row in the models table of the documentation (name, architecture,
   2-D / 3-D, notes). `docs/extending.md` has the details.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from medseg_jax import sharding
from medseg_jax.models.attention_unet import AttentionUNet
from medseg_jax.models.deeplab import DeepLabV3
from medseg_jax.models.deeplab import DeepLabV3Plus
from medseg_jax.models.fcn import FCN
from medseg_jax.models.mednext import MedNeXt
from medseg_jax.models.resenc_unet import ResEncUNet
from medseg_jax.models.swin_unetr import SwinUNETR
from medseg_jax.models.unet import UNet
from medseg_jax.models.unetr import UNETR
from medseg_jax.models.vnet import VNet

MODELS: dict[str, Callable[..., nn.Module]] = {
  "unet": UNet,  # 2-D U-Net and, with spatial_dims=3, the 3-D U-Net.
  "attention_unet": AttentionUNet,
  "vnet": VNet,
  "fcn": FCN,  # variant="32s" | "16s" | "8s".
  "deeplabv3": DeepLabV3,
  "deeplabv3plus": DeepLabV3Plus,
  "resenc_unet": ResEncUNet,  # nnU-Net ResEnc, preset="M" | "L".
  "mednext": MedNeXt,  # size="S" | "B" | "M" | "L", kernel_size=3 | 5.
  "unetr": UNETR,  # ViT encoder; spatial sizes multiples of patch_size.
  "swin_unetr": SwinUNETR,  # Multiples of patch_size * 2^len(depths).
}


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds the model registered as `name` with constructor `kwargs`.

  Args:
    name: a key of `MODELS`.
    **kwargs: constructor arguments, e.g. `num_classes=3,
      features=(32, 64, 128)`.

  Returns:
    The (unbound) Flax module.

  Raises:
    ValueError: if `name` is not registered; the message lists valid names.
  """
  try:
    constructor = MODELS[name]
  except KeyError:
    raise ValueError(
      f"Unknown model {name!r}; valid names: {sorted(MODELS)}."
    ) from None
  return constructor(**kwargs)


# Computation dtypes a config may name (`config.model.dtype`).
COMPUTE_DTYPES = ("float32", "bfloat16")


def _fields(constructor: Callable[..., nn.Module]) -> set[str]:
  return {f.name for f in dataclasses.fields(constructor)}


def from_config(config: Any, spec: Any) -> nn.Module:
  """The model a run config describes, for a dataset spec.

  `config.model` holds the registry name and the constructor's size
  arguments; the dataset (`spec`: a `data.spec.DatasetSpec`) gives the
  classes, channels and spatial dims. Three switches are handled here:
  `config.model.dtype` is the computation dtype (`COMPUTE_DTYPES`;
  parameters, logits and the loss stay float32), `config.model.remat`
  rematerialises every block, and a `config.mesh` with a `spatial` axis
  other than 1 makes 3-D models keep their activations split over
  `("data", "spatial")`.

  This is the one place a config becomes a model: the trainer, `evaluate`,
  `predict`, the benchmarks and the tests all call it.

  Raises:
    ValueError: for an unknown model name or dtype, or a switch the model
      does not have (the message lists the models that have it).
  """
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  dtype = str(kwargs.pop("dtype", "float32"))
  if dtype not in COMPUTE_DTYPES:
    raise ValueError(
      f"Unknown config.model.dtype {dtype!r}; valid: {COMPUTE_DTYPES}."
    )
  kwargs["dtype"] = jnp.dtype(dtype)
  switches = {"remat": bool(kwargs.pop("remat", False))}
  mesh_axes = dict(config.get("mesh", None) or {})
  if spec.spatial_dims == 3 and mesh_axes.get(sharding.SPATIAL_AXIS, 1) != 1:
    switches["partition"] = (sharding.DATA_AXIS, sharding.SPATIAL_AXIS)
  constructor = MODELS.get(config.model.name)
  for name, value in switches.items():
    if not value:
      continue
    # An unknown model name is left to get_model, whose error lists names.
    if constructor is not None and name not in _fields(constructor):
      able = sorted(n for n, c in MODELS.items() if name in _fields(c))
      raise ValueError(
        f"Model {config.model.name!r} does not support {name}; models "
        f"that do: {able}."
      )
    kwargs[name] = value
  return get_model(
    config.model.name,
    num_classes=spec.num_classes,
    spatial_dims=spec.spatial_dims,
    in_channels=spec.num_channels,
    **kwargs,
  )


def pad_multiple(config: Any) -> int:
  """Every spatial size a model is applied to is a multiple of this.

  `config.data.pad_multiple` if set; else what the model says for its
  fields if it has an `input_multiple()` method (UNETR: `patch_size`;
  SwinUNETR: `patch_size * 2^len(depths)`; U-Net, ResEnc U-Net and MedNeXt:
  `2^(levels or stages - 1)`); else `2 ** (levels - 1)` for encoder-decoder models
  with a `features` list; else 1 (FCN and DeepLab accept any size and pad
  or resize internally).
  """
  if config.data.get("pad_multiple"):
    return int(config.data.pad_multiple)
  constructor = MODELS.get(config.model.get("name"))
  if constructor is not None and hasattr(constructor, "input_multiple"):
    fields = _fields(constructor) - {"num_classes", "parent", "name"}
    kwargs = {k: v for k, v in config.model.items() if k in fields}
    patch = config.data.get("patch_size", None)
    if patch and "spatial_dims" in fields:
      kwargs.setdefault("spatial_dims", len(patch))
    return constructor(num_classes=1, **kwargs).input_multiple()
  if "features" in config.model:
    return 2 ** (len(config.model.features) - 1)
  return 1


__all__ = [
  "COMPUTE_DTYPES",
  "MODELS",
  "MedNeXt",
  "ResEncUNet",
  "UNETR",
  "SwinUNETR",
  "UNet",
  "from_config",
  "get_model",
  "pad_multiple",
]
