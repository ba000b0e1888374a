r"""ISBI 2012: 5-fold cross-validation over the 30 labelled slices.

  python -m medseg_jax.benchmark --suite=configs/benchmarks/isbi_kfold.py

Each fold validates on 6 contiguous slices and trains on the other 24
(`configs/unet_isbi2012.py:fold=k`) for 200 steps of batch 4, an eighth of
the single-split run's budget, so that five folds fit on a 2-core CPU. The
table has a row per fold and a pooled row per method over the held-out
slices of all folds (its per-seed column lists the folds). Otsu (membranes
are dark) is the classical reference, fitted per fold.
"""

FOLDS = range(5)


def get_suite():
  experiments = [
    dict(
      name=f"U-Net fold {k}",
      config=f"configs/unet_isbi2012.py:fold={k}",
      overrides={
        "num_train_steps": 200,
        "eval_every_steps": 200,
        "checkpoint_every_steps": 200,
      },
    )
    for k in FOLDS
  ]
  baselines = [
    dict(
      name=f"Otsu fold {k}",
      method="otsu",
      config=f"configs/unet_isbi2012.py:fold={k}",
      kwargs=dict(invert=True),
    )
    for k in FOLDS
  ]
  pools = [
    dict(
      name="U-Net, 5 folds pooled", members=[e["name"] for e in experiments]
    ),
    dict(name="Otsu, 5 folds pooled", members=[b["name"] for b in baselines]),
  ]
  return dict(
    name="isbi_kfold",
    split="test",
    experiments=experiments,
    baselines=baselines,
    pools=pools,
  )
