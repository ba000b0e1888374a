r"""The U-Net with each loss, on ISBI 2012 membranes and on the phantoms.

  python -m medseg_jax.benchmark --suite=configs/benchmarks/losses.py

Every loss of ``common.LOSS_PRESETS`` (docs/losses.md: cross-entropy,
soft Dice, CE + Dice, focal, Tversky, focal Tversky, generalised Dice,
Dice + clDice, generalised Dice + boundary), with the same U-Net, data,
augmentation and budget otherwise, three seeds each: on the ISBI 2012 EM
membranes (``configs/unet_isbi2012.py``, 1500 steps, scored on its fixed
validation slices; needs /work/shared/data/isbi2012_em_membrane or
``--config.manual_dir``), and on the 2-D synthetic phantoms
(``configs/unet_synthetic.py``, 600 steps, test split). The boundary
rows run their augmentation on the host (``common.apply_loss_arg``).
``losses_quick.py`` is the reduced version that fits a 2-core CPU.
"""

from configs import common

DATASETS = {
  "ISBI": "configs/unet_isbi2012.py",
  "phantoms": "configs/unet_synthetic.py",
}


def experiments(datasets, seeds, overrides=None):
  """One experiment per (dataset, loss preset), named ``"dataset: loss"``."""
  return [
    dict(
      name=f"{dataset}: {loss}",
      config=f"{DATASETS[dataset]}:loss={loss}",
      seeds=tuple(seeds),
      overrides=dict(overrides or {}),
    )
    for dataset in datasets
    for loss in common.LOSS_PRESETS
  ]


def get_suite():
  return dict(
    name="losses",
    split="test",
    experiments=experiments(DATASETS, seeds=(0, 1, 2)),
  )
