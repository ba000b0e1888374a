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

from collections.abc import Callable

import flax.linen as nn

from medseg_jax.models.attention_unet import AttentionUNet
from medseg_jax.models.deeplab import DeepLabV3
from medseg_jax.models.deeplab import DeepLabV3Plus
from medseg_jax.models.fcn import FCN
from medseg_jax.models.unet import UNet
from medseg_jax.models.vnet import VNet

MODELS: dict[str, Callable[..., nn.Module]] = {
  "unet": UNet,  # 2-D U-Net and, with spatial_dims=3, the 3-D U-Net.
  "attention_unet": AttentionUNet,
  "vnet": VNet,
  "fcn": FCN,  # variant="32s" | "16s" | "8s".
  "deeplabv3": DeepLabV3,
  "deeplabv3plus": DeepLabV3Plus,
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


__all__ = ["MODELS", "UNet", "get_model"]
