"""Writes the torchvision reference activations of torchvision_import_test.

Not run by the tests; they read the ``.npz`` files it wrote, so the
importer is checked numerically without torch. Run it (from the repository
root) in a separate environment that has torch and torchvision; README.md
beside it records the one that produced the stored files:

  python tests/models/testdata/make_torchvision_reference.py

Each file holds, for a small configuration of a torchvision ResNet (random
weights from a fixed seed, every channel count times ``WIDTH``):

  state/<key>      the state dict as torchvision names it, ``fc.*`` left out
                   (the importer does not use it; it is the bulk of the size)
  input            f32[2, 3, 37, 50], NCHW as torch takes it
  layer1..layer4   torchvision's outputs of those stages in evaluation mode,
                   transposed to NHWC as ``medseg_jax.models.resnet`` returns
  meta             a JSON string: depth, width, dilation, versions, seed
"""

import json
import pathlib
import sys
import types

import numpy as np
import torch
from torch import nn

# The PyPI torchvision wheel's compiled operators (nms, roi_align, ...) are
# built against the CUDA build of torch and do not load against the CPU
# wheel; registering their fake kernels then fails at import. ResNet uses
# none of them, so that one registration module is skipped.
sys.modules.setdefault(
  "torchvision._meta_registrations",
  types.ModuleType("torchvision._meta_registrations"),
)
import torchvision  # noqa: E402
from torchvision.models import resnet  # noqa: E402

WIDTH = 1 / 16
SEED = 0
OUT = pathlib.Path(__file__).resolve().parent
# File stem -> (depth, block, blocks per stage, replace_stride_with_dilation).
CONFIGS = {
  "torchvision_resnet18": (18, resnet.BasicBlock, [2, 2, 2, 2], [False] * 3),
  "torchvision_resnet50_dilated": (
    50,
    resnet.Bottleneck,
    [3, 4, 6, 3],
    [False, True, True],
  ),
}


def scaled(channels: int) -> int:
  """As ``medseg_jax.models.resnet.scaled``: rounded, at least 1."""
  return max(1, round(channels * WIDTH))


class NarrowResNet(resnet.ResNet):
  """torchvision's ResNet with every channel count times ``WIDTH``.

  torchvision fixes the stem at 64 channels and the stages at 64, 128, 256
  and 512 planes; this narrows both and keeps everything else (blocks,
  strides, dilation, padding, downsample rule, initialisation) as is.
  """

  def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
    if planes == 64:  # The first stage: narrow the stem built before it.
      self.inplanes = scaled(64)
      self.conv1 = nn.Conv2d(
        3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False
      )
      self.bn1 = self._norm_layer(self.inplanes)
    return super()._make_layer(block, scaled(planes), blocks, stride, dilate)


def reference(depth, block, layers, dilation):
  torch.manual_seed(SEED)
  net = NarrowResNet(
    block, layers, replace_stride_with_dilation=dilation
  ).eval()
  with torch.no_grad():  # Non-trivial batch norm, so a swapped leaf shows.
    for module in net.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
  x = np.random.default_rng(SEED).standard_normal((2, 3, 37, 50), np.float32)
  arrays = {
    f"state/{key}": value.numpy()
    for key, value in net.state_dict().items()
    if not key.startswith("fc.")
  }
  arrays["input"] = x
  with torch.no_grad():
    t = net.maxpool(net.relu(net.bn1(net.conv1(torch.from_numpy(x)))))
    for name in ("layer1", "layer2", "layer3", "layer4"):
      t = getattr(net, name)(t)
      arrays[name] = t.numpy().transpose(0, 2, 3, 1)
  arrays["meta"] = np.array(
    json.dumps(
      {
        "depth": depth,
        "width": WIDTH,
        "replace_stride_with_dilation": dilation,
        "seed": SEED,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
      }
    )
  )
  return arrays


def main():
  for stem, (depth, block, layers, dilation) in CONFIGS.items():
    path = OUT / f"{stem}.npz"
    np.savez_compressed(path, **reference(depth, block, layers, dilation))
    print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
  main()
