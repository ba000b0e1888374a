r"""Adversarial 2-D U-Net on the ISBI 2012 EM membranes.

  python -m medseg_jax.main --config=configs/segan_isbi2012.py \
      --workdir=workdirs/segan_isbi2012 \
      --config.manual_dir=../shared/data/isbi2012_em_membrane

  python -m medseg_jax.main --config=configs/segan_isbi2012.py:runlocal \
      --workdir=/tmp/segan_isbi2012_local

The segmentor, data and split are `configs/unet_isbi2012.py`'s; the
trainer is `medseg_jax/train_adversarial.py`. Arguments: ``critic=patchgan``
(default SegAN), ``gan_loss=`` (PatchGAN: least_squares, hinge, bce),
``weight=0`` for the same run without the adversarial term, and
``steps=``, ``seed=``, ``slices=``, ``percent=`` as in the U-Net config.
"""

from configs import common
from configs import unet_isbi2012


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    runlocal=False,
    steps=0,
    percent=100,
    seed=-1,
    slices=0,
    critic="segan",
    gan_loss="least_squares",
    weight=-1.0,
  )
  base = [f"percent={args.percent}", f"seed={args.seed}"]
  if args.runlocal:
    base.append("runlocal")
  if args.steps:
    base.append(f"steps={args.steps}")
  if args.slices:
    base.append(f"slices={args.slices}")
  config = unet_isbi2012.get_config(",".join(base))
  common.adversarial_config(config, args.critic)
  config.adversarial.loss = args.gan_loss
  if args.weight >= 0:
    config.adversarial.weight = args.weight
  if args.runlocal:
    critic = config.adversarial.critic
    if critic.name == "segan":
      critic.features = (8, 16)
    else:
      critic.ndf, critic.num_layers = 8, 2
  return config
