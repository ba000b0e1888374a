r"""Every 3-D zoo model on the 3-D phantoms and the Lesjak MS subset.

  python -m medseg_jax.benchmark --suite=configs/benchmarks/zoo_3d.py
  python -m medseg_jax.benchmark --suite=configs/benchmarks/zoo_3d.py \
      "--only=Lesjak: unet,Lesjak: resenc_unet"

The 3-D half of the fair comparison (`zoo_isbi.py` is the 2-D half): each
preset of `configs/zoo.py` that runs in 3-D trains through its dataset's
pipeline at one budget, ``STEPS`` steps of batch 4 on 32^3 patches (32 is
a multiple every preset accepts, SwinUNETR's included), seed 0: on the 3-D
phantoms (scored on the 16 test volumes of 64^3) and on the 3-case Lesjak
subset (patients 07 and 19 train, 26 is scored whole by sliding window;
half of the patches centred on a lesion voxel; needs
``../shared/data/open_ms_data_lesjak2017``). Otsu is the classical
reference on the phantoms.

``zoo_synthetic3d.py`` is the older two-model table (V-Net and the 3-D
U-Net at their own budgets). ``benchmarks/zoo_costs.py --data=synthetic3d``
prints each preset's step time, FLOPs and memory at this batch and patch.
"""

from configs import common
from configs import zoo

STEPS = 400
PATCH = (32, 32, 32)
DATASETS = {"phantoms3d": "synthetic3d", "Lesjak": "lesjak"}


def get_suite():
  overrides = {
    "num_train_steps": STEPS,
    "eval_every_steps": STEPS,
    "checkpoint_every_steps": STEPS,
    "batch_size": 4,
    "data.patch_size": PATCH,
  }
  experiments = [
    dict(
      name=f"{label}: {model}",
      config=f"configs/zoo.py:model={model},data={data}",
      seeds=(0,),
      overrides=overrides,
    )
    for label, data in DATASETS.items()
    for model, (_, dims) in zoo.MODELS.items()
    if 3 in dims and model != "unet_residual_ds"
  ]
  baselines = common.classical_baselines(
    "configs/unet3d_synthetic.py", (("phantoms3d: Otsu", "otsu"),)
  )
  return dict(
    name="zoo_3d", split="test", experiments=experiments, baselines=baselines
  )
