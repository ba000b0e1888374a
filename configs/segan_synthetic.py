r"""Adversarial 2-D U-Net on the synthetic phantoms: SegAN or PatchGAN critic.

  python -m medseg_jax.main --config=configs/segan_synthetic.py \
      --workdir=workdirs/segan_synthetic

  # seconds on a laptop CPU:
  python -m medseg_jax.main --config=configs/segan_synthetic.py:runlocal \
      --workdir=/tmp/segan_synthetic_local

The segmentor is `configs/unet_synthetic.py`'s U-Net; the trainer is
`medseg_jax/train_adversarial.py`. Arguments: ``critic=patchgan`` for a
conditional PatchGAN instead of SegAN's critic, ``gan_loss=hinge`` (or
``bce``, ``least_squares``) for the PatchGAN's loss, ``weight=0`` for the
same run without the adversarial term (the critic still trains, unused),
``steps=``, ``seed=``, ``percent=`` as in ``configs/common.py``.
"""

from configs import common
from configs import unet_synthetic


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    runlocal=False,
    steps=0,
    percent=100,
    seed=-1,
    critic="segan",
    gan_loss="least_squares",
    weight=-1.0,
  )
  config = unet_synthetic.get_config("runlocal" if args.runlocal else None)
  common.adversarial_config(config, args.critic)
  config.adversarial.loss = args.gan_loss
  if args.weight >= 0:
    config.adversarial.weight = args.weight
  if args.runlocal:
    # A critic the size of the runlocal segmentor.
    critic = config.adversarial.critic
    if critic.name == "segan":
      critic.features = (8, 16)
    else:
      critic.ndf, critic.num_layers = 8, 2
  if args.steps:
    config.num_train_steps = args.steps
  common.apply_data_args(config, args)
  return config
