r"""3-D U-Net (Cicek et al. 2016) on the synthetic 64^3 phantom volumes.

  python -m medseg_jax.main --config=configs/unet3d_synthetic.py \
      --workdir=workdirs/unet3d_synthetic

  python -m medseg_jax.main --config=configs/unet3d_synthetic.py:runlocal \
      --workdir=/tmp/unet3d_local
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, runlocal=False, steps=0)
  config = common.base_config()
  config.dataset = "synthetic_phantoms/3d"
  # 32^3 random crops of the 64^3 volumes keep a CPU step near a second;
  # evaluation runs on whole volumes.
  config.data.patch_size = (32, 32, 32)
  # Cicek et al.'s layout (channels double within each level), CPU-sized.
  config.model.features = (4, 8, 16, 32)
  config.model.double_within_level = True
  config.batch_size = 4
  config.num_train_steps = 600
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  if args.runlocal:
    common.shrink_for_local_run(config)
    config.data.patch_size = (16, 16, 16)
    config.model.features = (4, 8)
    config.batch_size = 2
  if args.steps:
    config.num_train_steps = args.steps
  return config
