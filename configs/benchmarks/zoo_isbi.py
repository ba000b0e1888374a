r"""Every 2-D zoo model on ISBI 2012, 5-fold cross-validation, one budget.

  python -m medseg_jax.benchmark --suite=configs/benchmarks/zoo_isbi.py

The fair comparison of "nnU-Net Revisited" at the size of a 2-core CPU:
each preset of `configs/zoo.py` that runs in 2-D (the seed's U-Net,
Attention U-Net, FCN-8s, DeepLabv3 and v3+, and today's ResEnc U-Net,
MedNeXt, UNETR and SwinUNETR) trains through the same pipeline (the ISBI
config's random flips, CE + Dice, Adam at 1e-3 with its schedule), the same
budget (``STEPS`` steps of batch 4 on 128x128 patches; every step sees the
same number of pixels whatever the model) and the same folds
(`configs/unet_isbi2012.py:fold=k`: 6 contiguous held-out slices, 24
training slices). Each fold is scored on its whole 512x512 held-out slices
by sliding window, and a pooled row per model covers all 30 slices. The
``unet_isbi2012`` rows are the dataset's default config (a wider, deeper
U-Net than the ``unet`` preset) at the same budget. Otsu
(membranes are dark) is the classical reference, fitted per fold.

``benchmarks/zoo_costs.py --data=isbi`` gives each preset's parameters,
FLOPs and memory per step at this batch and patch.
"""

from configs.benchmarks import zoo_synthetic2d

FOLDS = range(5)
STEPS = 200
PATCH = (128, 128)


def get_suite():
  overrides = {
    "num_train_steps": STEPS,
    "eval_every_steps": STEPS,
    "checkpoint_every_steps": STEPS,
    "data.patch_size": PATCH,
  }
  experiments, pools = [], []
  for model in zoo_synthetic2d.MODELS:
    names = [f"{model} fold {k}" for k in FOLDS]
    experiments += [
      dict(
        name=name,
        config=f"configs/zoo.py:model={model},data=isbi,fold={k}",
        overrides=overrides,
      )
      for k, name in zip(FOLDS, names, strict=True)
    ]
    pools.append(dict(name=f"{model}, 5 folds pooled", members=names))
  # Today's default for this dataset, `configs/unet_isbi2012.py` (U-Net
  # 16-256, 5 levels), at the same budget: the row a new model must beat.
  names = [f"unet_isbi2012 fold {k}" for k in FOLDS]
  experiments += [
    dict(
      name=name,
      config=f"configs/unet_isbi2012.py:fold={k}",
      overrides=overrides,
    )
    for k, name in zip(FOLDS, names, strict=True)
  ]
  pools.append(dict(name="unet_isbi2012, 5 folds pooled", members=names))
  baselines = [
    dict(
      name=f"Otsu fold {k}",
      method="otsu",
      config=f"configs/unet_isbi2012.py:fold={k}",
      kwargs=dict(invert=True),
    )
    for k in FOLDS
  ]
  pools.append(
    dict(name="Otsu, 5 folds pooled", members=[b["name"] for b in baselines])
  )
  return dict(
    name="zoo_isbi",
    split="test",
    experiments=experiments,
    baselines=baselines,
    pools=pools,
  )
