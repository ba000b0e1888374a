r"""Scarce labels: fine-tune on 4 ISBI 2012 slices, with or without pretraining.

  # 1. Pretrain on the synthetic phantoms (the `make demo` job).
  python -m medseg_jax.main --config=configs/unet_synthetic.py \
      --workdir=workdirs/pretrain_synthetic
  # 2a. From scratch, 4 labelled slices.
  python -m medseg_jax.main --config=configs/transfer_isbi2012.py \
      --workdir=workdirs/isbi4_scratch
  # 2b. Same budget, initialised from the pretrained weights (the head is
  #     re-initialised: 4 synthetic classes vs 2 here).
  python -m medseg_jax.main \
      --config=configs/transfer_isbi2012.py:pretrained=workdirs/pretrain_synthetic \
      --workdir=workdirs/isbi4_pretrained
  # 2c. As 2b with the encoder frozen.
  python -m medseg_jax.main \
      --config=configs/transfer_isbi2012.py:pretrained=workdirs/pretrain_synthetic,freeze_encoder \
      --workdir=workdirs/isbi4_frozen

Validation is the fixed ISBI fold (slices 24-29) in every case.
"""

from configs import common
from configs import unet_isbi2012
from configs import unet_synthetic


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    pretrained="",
    freeze_encoder=False,
    slices=4,
    steps=300,
    runlocal=False,
  )
  config = unet_isbi2012.get_config("runlocal" if args.runlocal else None)
  # The architecture must match the pretraining run's.
  config.model = unet_synthetic.get_config(
    "runlocal" if args.runlocal else None
  ).model
  config.train_split = f"train[:{args.slices}]"
  config.data.patch_size = (128, 128)
  config.batch_size = 8
  if not args.runlocal:
    config.num_train_steps = args.steps
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 100
  if args.pretrained:
    config.init_from = args.pretrained
    config.init_exclude = ["^head/"]
  if args.freeze_encoder:
    config.optimizer.param_groups = [
      dict(pattern="^(down_|bottleneck)", freeze=True)
    ]
  return config
