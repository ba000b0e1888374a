r"""2-D U-Net on the embedded synthetic phantoms (the `make demo` job).

  python -m medseg_jax.main --config=configs/unet_synthetic.py \
      --workdir=workdirs/unet_synthetic

  # seconds on a laptop CPU:
  python -m medseg_jax.main --config=configs/unet_synthetic.py:runlocal \
      --workdir=/tmp/unet_synthetic_local

Classes: background, organ, lesion (inside the organ), vessel. Arguments:
``percent=25`` trains on the first 25 % of the training split, ``seed=1``
sets the seed, ``augment=artefacts`` adds graded MRI artefacts to the
augmentations (``common.ARTEFACT_AUGMENT``, docs/robustness.md),
``loss=NAME`` picks a loss of ``common.LOSS_PRESETS`` (docs/losses.md).
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    runlocal=False,
    steps=0,
    percent=100,
    seed=-1,
    augment="none",
    loss="ce_dice",
  )
  config = common.base_config()
  config.dataset = "synthetic_phantoms/2d"
  # Whole 128x128 images: the context beats more, smaller patches here.
  config.data.patch_size = (128, 128)
  config.batch_size = 8
  config.model.features = (16, 32, 64, 128)
  config.num_train_steps = 600
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  if args.runlocal:
    common.shrink_for_local_run(config)
  if args.steps:
    config.num_train_steps = args.steps
  if args.augment not in ("none", "artefacts"):
    raise ValueError(
      f"Unknown augment={args.augment!r}; valid: ['artefacts', 'none']."
    )
  if args.augment == "artefacts":
    config.augment = [*config.augment, *map(dict, common.ARTEFACT_AUGMENT)]
  common.apply_data_args(config, args)
  common.apply_loss_arg(config, args.loss)
  return config
