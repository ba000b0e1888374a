r"""The 3-D models side by side with classical methods on the 3-D phantoms.

  python -m medseg_jax.benchmark --suite=configs/benchmarks/zoo_synthetic3d.py

V-Net (3^3 kernels, 2000 steps) and the 3-D U-Net (Cicek layout 8-64, 800
steps), batch 4 of 32^3 crops, one seed each, scored on the 16 test volumes
of 64^3; Otsu and a random walker fitted on the training volumes.
"""

from configs import common

EXPERIMENTS = (
  ("vnet", "configs/zoo.py:model=vnet,data=synthetic3d,steps=2000"),
  ("unet3d", "configs/zoo.py:model=unet3d,data=synthetic3d,steps=800"),
)


def get_suite():
  experiments = [
    dict(name=name, config=config, seeds=(0,)) for name, config in EXPERIMENTS
  ]
  config = "configs/unet3d_synthetic.py"
  baselines = common.classical_baselines(
    config, (("Otsu", "otsu"), ("Random walker", "random_walker"))
  )
  return dict(
    name="zoo_synthetic3d",
    split="test",
    experiments=experiments,
    baselines=baselines,
  )
