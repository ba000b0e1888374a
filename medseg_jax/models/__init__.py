"""Segmentation models and the name -> constructor registry.

Configs name a model (`config.model.name = "unet"`) and pass its sizes as
keyword arguments; `get_model` resolves the name through `MODELS`, the one
place where names are defined:

  >>> model = get_model("unet", num_classes=2, features=(16, 32, 64))
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
