r"""The loss benchmark reduced to what a shared 2-core CPU affords.

  python -m medseg_jax.benchmark --suite=configs/benchmarks/losses_quick.py

``losses.py`` on the phantoms only, seed 0, 150 steps of batch 8 (a
quarter of the phantom config's 600), validated and checkpointed at the
end only, test split cut to its first 16 cases. A smoke-level comparison:
differences of a few Dice points between rows are within what another
seed would change.
"""

from configs.benchmarks import losses

STEPS = 150


def get_suite():
  return dict(
    name="losses_quick",
    split="test",
    experiments=losses.experiments(
      ["phantoms"],
      seeds=(0,),
      overrides={
        "num_train_steps": STEPS,
        "eval_every_steps": STEPS,
        "checkpoint_every_steps": STEPS,
        "eval_split": "validation[:8]",
        "test_split": "test[:16]",
      },
    ),
  )
