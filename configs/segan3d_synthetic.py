r"""Adversarial 3-D U-Net on the synthetic 64^3 phantom volumes.

  python -m medseg_jax.main --config=configs/segan3d_synthetic.py \
      --workdir=workdirs/segan3d_synthetic

  python -m medseg_jax.main --config=configs/segan3d_synthetic.py:runlocal \
      --workdir=/tmp/segan3d_local

The segmentor is `configs/unet3d_synthetic.py`'s 3-D U-Net on 32^3 crops;
the critic works on volumes (4^3 kernels) and is narrower than the 2-D
one so that a CPU step stays near the supervised one's cost. Arguments:
``critic=patchgan`` (default SegAN), ``gan_loss=`` (PatchGAN:
least_squares, hinge, bce), ``weight=0`` for the run without the
adversarial term, ``steps=``.
"""

from configs import common
from configs import unet3d_synthetic


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    runlocal=False,
    steps=0,
    critic="segan",
    gan_loss="least_squares",
    weight=-1.0,
  )
  base = ["runlocal"] if args.runlocal else []
  if args.steps:
    base.append(f"steps={args.steps}")
  config = unet3d_synthetic.get_config(",".join(base))
  common.adversarial_config(config, args.critic)
  config.adversarial.loss = args.gan_loss
  if args.weight >= 0:
    config.adversarial.weight = args.weight
  critic = config.adversarial.critic
  if critic.name == "segan":
    critic.features = (8, 16) if args.runlocal else (16, 32, 64)
  else:
    # Two strided layers: a 32^3 patch leaves 8^3 patch logits.
    critic.ndf = 4 if args.runlocal else 16
    critic.num_layers = 2
  return config
