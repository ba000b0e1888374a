"""Segmentation models and the name -> constructor registry.

Configs name a model (`config.model.name = "unet"`) and pass its sizes as
keyword arguments; `get_model` resolves the name through `MODELS`, the one
place where names are defined:

  >>> model = get_model("unet", num_classes=2, features=(16, 32, 64))
"""

from collections.abc import Callable

import flax.linen as nn

from medseg_jax.models.unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {
  "unet": UNet,
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
