r"""The loss benchmark at the budget a shared 2-core CPU affords.

  python -m medseg_jax.benchmark --suite=configs/benchmarks/losses_quick.py

``losses.py``'s comparison, reduced: the base ``ce_dice`` and the seven
newer loss presets (not plain cross-entropy or Dice), three seeds each, on

- the ISBI 2012 membranes (``configs/unet_isbi2012.py``, the ISBI U-Net
  16-256): ``ISBI_STEPS`` steps of batch 4 on 128x128 patches, the budget of
  ``zoo_isbi.py``, scored on the 6 fixed validation slices (whole 512x512);
- the 2-D phantoms (``configs/unet_synthetic.py``, U-Net 16-128):
  ``PHANTOM_STEPS`` steps of batch 8 (a fifth of the phantom config's
  600), scored on the first 16 test phantoms; the per-class table has the
  thin vessels' Dice.

Each run validates and checkpoints at its end only.
"""

from configs.benchmarks import losses

PHANTOM_STEPS = 120
ISBI_STEPS = 200
SEEDS = (0, 1, 2)
SKIP = ("cross_entropy", "dice")


def _budget(steps: int, **extra) -> dict:
  return {
    "num_train_steps": steps,
    "eval_every_steps": steps,
    "checkpoint_every_steps": steps,
    **extra,
  }


def get_suite():
  phantoms = losses.experiments(
    ["phantoms"],
    seeds=SEEDS,
    overrides=_budget(
      PHANTOM_STEPS, eval_split="validation[:8]", test_split="test[:16]"
    ),
  )
  isbi = losses.experiments(
    ["ISBI"],
    seeds=SEEDS,
    overrides=_budget(ISBI_STEPS, **{"data.patch_size": (128, 128)}),
  )
  return dict(
    name="losses_quick",
    split="test",
    experiments=[
      e for e in isbi + phantoms if e["name"].split(": ")[1] not in SKIP
    ],
  )
