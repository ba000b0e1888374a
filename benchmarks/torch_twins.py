"""PyTorch twins of medseg_jax networks, for the benchmarks' peer columns.

Benchmark-only: imports torch lazily; never imported by `medseg_jax` or its
tests. `make_torch_unet` builds the exact counterpart of
`medseg_jax.models.UNet` (default layout: two 3^d convolutions + norm +
ReLU per level, 2^d max pooling, 2^d stride-2 transposed convolutions,
`[skip, upsampled]` concatenation, 1^d head), and `flax_variables_from_torch`
copies its weights into our parameter pytree, so a benchmark can check that
both compute the same function before it times them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def make_torch_unet(
  features: Sequence[int],
  in_channels: int,
  num_classes: int,
  norm: str = "batch",
  spatial_dims: int = 3,
):
  """The PyTorch twin of `medseg_jax.models.UNet` (channels first)."""
  import torch  # noqa: PLC0415

  nn = torch.nn
  conv_cls = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
  tconv_cls = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]
  pool_cls = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]

  def norm_layer(c):
    if norm == "batch":
      cls = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]
      return cls(c)  # momentum 0.1 and eps 1e-5, as ours.
    if norm == "instance":
      cls = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims]
      return cls(c, affine=True)
    return nn.Identity()

  def block(cin, cout):
    bias = norm == "none"
    return nn.Sequential(
      conv_cls(cin, cout, 3, padding=1, bias=bias),
      norm_layer(cout),
      nn.ReLU(inplace=True),
      conv_cls(cout, cout, 3, padding=1, bias=bias),
      norm_layer(cout),
      nn.ReLU(inplace=True),
    )

  class TorchUNet(nn.Module):
    def __init__(self):
      super().__init__()
      levels = len(features)
      self.downs = nn.ModuleList()
      cin = in_channels
      for f in features[:-1]:
        self.downs.append(block(cin, f))
        cin = f
      self.bottleneck = block(cin, features[-1])
      self.upconvs = nn.ModuleList()
      self.ups = nn.ModuleList()
      cin = features[-1]
      for level in reversed(range(levels - 1)):
        f = features[level]
        self.upconvs.append(tconv_cls(cin, f, 2, stride=2))
        self.ups.append(block(2 * f, f))
        cin = f
      self.head = conv_cls(cin, num_classes, 1)
      self.pool = pool_cls(2)

    def forward(self, x):
      skips = []
      for down in self.downs:
        x = down(x)
        skips.append(x)
        x = self.pool(x)
      x = self.bottleneck(x)
      for upconv, up, skip in zip(
        self.upconvs, self.ups, reversed(skips), strict=True
      ):
        x = up(torch.cat([skip, upconv(x)], dim=1))
      return self.head(x)

  return TorchUNet()


def flax_variables_from_torch(net, num_levels: int, spatial_dims: int) -> dict:
  """Our `UNet` variables holding the twin's weights (batch norm only).

  Convolution weights `[O, I, *k]` become `[*k, I, O]`; transposed
  convolution weights `[I, O, *k]` become `[*k, I, O]` flipped along every
  spatial axis (our `UpConvTranspose` follows `nn.ConvTranspose`, which
  applies the kernel flipped).
  """
  d = spatial_dims
  spatial = tuple(range(2, 2 + d))

  def conv(w):
    w = w.detach().numpy()
    return np.transpose(w, (*spatial, 1, 0))

  def tconv(w):
    w = w.detach().numpy()
    w = np.transpose(w, (*spatial, 0, 1))
    return w[(slice(None, None, -1),) * d].copy()

  def block(seq):
    params, stats = {}, {}
    for i, (c, n) in enumerate(((0, 1), (3, 4))):
      params[f"conv_{i}"] = {"kernel": conv(seq[c].weight)}
      bn = seq[n]
      params[f"norm_{i}"] = {
        "scale": bn.weight.detach().numpy(),
        "bias": bn.bias.detach().numpy(),
      }
      stats[f"norm_{i}"] = {
        "mean": bn.running_mean.numpy(),
        "var": bn.running_var.numpy(),
      }
    return params, stats

  params, stats = {}, {}
  for level, down in enumerate(net.downs):
    params[f"down_{level}"], stats[f"down_{level}"] = block(down)
  params["bottleneck"], stats["bottleneck"] = block(net.bottleneck)
  levels = list(reversed(range(num_levels - 1)))
  for level, upconv, up in zip(levels, net.upconvs, net.ups, strict=True):
    params[f"upsample_{level}"] = {
      "conv_transpose": {
        "kernel": tconv(upconv.weight),
        "bias": upconv.bias.detach().numpy(),
      }
    }
    params[f"up_{level}"], stats[f"up_{level}"] = block(up)
  params["head"] = {
    "kernel": conv(net.head.weight),
    "bias": net.head.bias.detach().numpy(),
  }
  return {"params": params, "batch_stats": stats}
