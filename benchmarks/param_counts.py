r"""Parameter counts of the ResEnc U-Net and MedNeXt presets beside references.

  python benchmarks/param_counts.py
  python benchmarks/param_counts.py --dna_path=/path/to/dynamic-network-architectures

Ours are counted abstractly (`jax.eval_shape`, nothing allocated), 1 input
channel, 2 classes, with the deep-supervision heads. References:

* ResEnc: dynamic-network-architectures' `ResidualEncoderUNet` with
  nnU-Net's ResEnc plan arguments, counted live when `--dna_path` points at
  a checkout of MIC-DKFZ/dynamic-network-architectures and torch is
  installed, else the stored counts of `tests/models/resenc_unet_test.py`.
* MedNeXt: the paper's Table 1 (kernel 3, in millions) and MONAI's
  `create_mednext`, counted live when MONAI is installed.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from medseg_jax.models import mednext
from medseg_jax.models.mednext import MedNeXt
from medseg_jax.models.resenc_unet import ResEncUNet

_DNA_PATH = flags.DEFINE_string(
  "dna_path", "", "A dynamic-network-architectures checkout (optional)."
)

PAPER_MILLIONS = {"S": 5.6, "B": 10.5, "M": 17.6, "L": 61.8}
STORED_DNA = {
  (3, 6): 102_349_770,
  (2, 8): 140_017_038,
}


def _count(model, spatial_dims: int, edge: int) -> int:
  shape = jax.ShapeDtypeStruct((1, *(edge,) * spatial_dims, 1), jnp.float32)
  variables = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), shape
  )
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables))


def _dna_count(spatial_dims: int, stages: int) -> tuple[int, str]:
  if not _DNA_PATH.value:
    return STORED_DNA[(spatial_dims, stages)], "stored"
  sys.path.insert(0, _DNA_PATH.value)
  # pylint: disable=g-import-not-at-top
  from dynamic_network_architectures.architectures.unet import (  # noqa: PLC0415
    ResidualEncoderUNet,
  )
  from torch import nn  # noqa: PLC0415

  conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
  norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
  widest = 320 if spatial_dims == 3 else 512
  net = ResidualEncoderUNet(
    1,
    stages,
    [min(widest, 32 * 2**s) for s in range(stages)],
    conv,
    3,
    [1] + [2] * (stages - 1),
    (1, 3, 4, 6, 6, 6, 6, 6)[:stages],
    2,
    1,
    True,
    norm,
    {"eps": 1e-5, "affine": True},
    None,
    None,
    nn.LeakyReLU,
    {"inplace": True},
    deep_supervision=True,
  )
  return sum(p.numel() for p in net.parameters()), "live"


def _monai_count(size: str, spatial_dims: int, kernel: int) -> int | None:
  try:
    from monai.networks.nets.mednext import create_mednext  # noqa: PLC0415
  except ImportError:
    return None
  net = create_mednext(
    size,
    spatial_dims=spatial_dims,
    in_channels=1,
    out_channels=2,
    kernel_size=kernel,
    deep_supervision=True,
  )
  return sum(p.numel() for p in net.parameters())


def main(argv):
  del argv
  print("| model | dims | ours | reference | difference |")
  print("|---|---|---|---|---|")
  for spatial_dims in (3, 2):
    for preset in ("M", "L"):
      model = ResEncUNet(
        num_classes=2,
        spatial_dims=spatial_dims,
        preset=preset,
        deep_supervision=True,
      )
      stages = model.resolved_num_stages()
      ours = _count(model, spatial_dims, 2 ** (stages - 1))
      ref, how = _dna_count(spatial_dims, stages)
      print(
        f"| ResEnc {preset} ({stages} stages) | {spatial_dims}-D | {ours:,} "
        f"| {ref:,} (dynamic-network-architectures, {how}) "
        f"| {(ours - ref) / ref:+.2%} |"
      )
  for spatial_dims in (3, 2):
    for kernel in (3, 5):
      for size in sorted(mednext.SIZES, key="SBML".index):
        model = MedNeXt(
          num_classes=2,
          spatial_dims=spatial_dims,
          size=size,
          kernel_size=kernel,
          deep_supervision=True,
        )
        ours = _count(model, spatial_dims, 16)
        paper = ""
        if spatial_dims == 3 and kernel == 3:
          paper = f"paper {PAPER_MILLIONS[size]} M; "
        monai = _monai_count(size, spatial_dims, kernel)
        gap = "" if monai is None else f"{(ours - monai) / monai:+.2%} (MONAI)"
        monai = "n/a" if monai is None else f"{monai:,}"
        print(
          f"| MedNeXt-{size} k{kernel} | {spatial_dims}-D | {ours:,} "
          f"| {paper}MONAI {monai} | {gap} |"
        )


if __name__ == "__main__":
  app.run(main)
