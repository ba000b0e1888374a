r"""The loss benchmark reduced to what a shared 2-core CPU affords.

  python -m medseg_jax.benchmark --suite=configs/benchmarks/losses_quick.py

``losses.py`` on the phantoms only, for the base ``ce_dice`` and the seven
newer losses (not plain cross-entropy or Dice), seed 0, 120 steps of batch
8 (a fifth of the phantom config's 600), validated and checkpointed at the
end only, test split cut to its first 16 cases. A smoke-level comparison
of short runs: it shows that each loss trains, not which is best.
"""

from configs.benchmarks import losses

STEPS = 120
SKIP = ("cross_entropy", "dice")


def get_suite():
  return dict(
    name="losses_quick",
    split="test",
    experiments=[
      e
      for e in losses.experiments(
        ["phantoms"],
        seeds=(0,),
        overrides={
          "num_train_steps": STEPS,
          "eval_every_steps": STEPS,
          "checkpoint_every_steps": STEPS,
          "eval_split": "validation[:8]",
          "test_split": "test[:16]",
        },
      )
      if e["name"].split(": ")[1] not in SKIP
    ],
  )
