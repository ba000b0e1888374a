r"""Deep models side by side with classical methods on the 2-D phantoms.

  python -m medseg_jax.benchmark --suite=configs/benchmarks/zoo_synthetic2d.py

Every zoo model at its CPU-sized preset, 600 steps, seed 0; Otsu,
watershed and random walker fitted on the training split.
"""

from configs import common

MODELS = (
  "unet",
  "attention_unet",
  "deeplabv3plus",
  "deeplabv3",
  "fcn8s",
  "resenc_unet",
  "mednext",
  "unetr",
  "swin_unetr",
)


def get_suite():
  experiments = [
    dict(name=model, config=f"configs/zoo.py:model={model}", seeds=(0,))
    for model in MODELS
  ]
  config = "configs/unet_synthetic.py"
  baselines = common.classical_baselines(
    config,
    (
      ("Otsu", "otsu"),
      ("Watershed", "watershed"),
      ("Random walker", "random_walker"),
    ),
  )
  return dict(
    name="zoo_synthetic2d",
    split="test",
    experiments=experiments,
    baselines=baselines,
  )
