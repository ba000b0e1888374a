r"""The same U-Net with and without an adversarial (SegAN) term, same budget.

  python -m medseg_jax.benchmark --suite=configs/benchmarks/adversarial.py \
      --root=workdirs/benchmarks
  python benchmarks/adversarial.py --root=workdirs/benchmarks

Two data sets, three seeds each: the 2-D synthetic phantoms and ISBI 2012
(fixed split, validation slices 24-29). Each pair shares everything but
the trainer: the supervised row is `python -m medseg_jax.main` with the
U-Net config, the adversarial row the SegAN config built on it
(`configs/segan_*.py`, `medseg_jax/train_adversarial.py`), with the same
seed, so the same initial segmentor weights, batches and augmentations.
The budget (300 steps of batch 4 on 64x64 crops, narrow U-Nets) is sized
for a shared 2-core CPU; `benchmarks/adversarial.py` turns the runs into
the pooled-Dice table of docs/adversarial.md.
"""

SEEDS = (0, 1, 2)

SYNTHETIC = {
  "num_train_steps": 300,
  "eval_every_steps": 300,
  "checkpoint_every_steps": 300,
  "log_every_steps": 50,
  "batch_size": 4,
  "data.patch_size": (64, 64),
  "model.features": (8, 16, 32),
}
ISBI = {**SYNTHETIC, "model.features": (8, 16, 32, 64)}
# SegAN's critic, narrower than the paper's 64-128-256 to fit the budget.
CRITIC = {"adversarial.critic.features": (16, 32, 64)}


def get_suite():
  experiments = [
    dict(
      name="synthetic U-Net",
      config="configs/unet_synthetic.py",
      overrides=SYNTHETIC,
      seeds=SEEDS,
    ),
    dict(
      name="synthetic U-Net + SegAN",
      config="configs/segan_synthetic.py",
      overrides={**SYNTHETIC, **CRITIC},
      seeds=SEEDS,
    ),
    dict(
      name="ISBI U-Net",
      config="configs/unet_isbi2012.py",
      overrides=ISBI,
      seeds=SEEDS,
    ),
    dict(
      name="ISBI U-Net + SegAN",
      config="configs/segan_isbi2012.py",
      overrides={**ISBI, **CRITIC},
      seeds=SEEDS,
    ),
  ]
  return dict(name="adversarial", split="test", experiments=experiments)
