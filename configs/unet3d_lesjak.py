r"""3-D U-Net on the Lesjak et al. 2017 MS lesion MRI (4 channels).

With the 3-case subset in ``../shared`` (patients 07 and 19 train, 26
validation); the full 30-patient set splits 20/10 the same way:

  python -m medseg_jax.main --config=configs/unet3d_lesjak.py \
      --workdir=workdirs/unet3d_lesjak \
      --config.manual_dir=../shared/data/open_ms_data_lesjak2017

Without ``manual_dir`` the builder downloads the 30 patients from GitHub.
The volumes are z-scored per channel inside the brain at build time, so the
input pipeline only crops (the train step flips). Lesions are small (0.1-2 %
of the brain), so half of the training patches are centred on a lesion
voxel (nnU-Net-style foreground oversampling). Validation runs on the
whole cropped volume.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, runlocal=False, steps=0)
  config = common.base_config()
  config.dataset = "lesjak_ms"
  config.manual_dir = "../shared/data/open_ms_data_lesjak2017"
  config.test_split = "validation"  # 3 cases allow no separate test split.
  config.data.patch_size = (48, 48, 48)
  config.data.train_transforms = [
    dict(op="random_crop_or_pad", foreground_share=0.5),
  ]
  # Cicek et al.'s layout (channels double within each level), CPU-sized.
  config.model.features = (4, 8, 16, 32)
  config.model.double_within_level = True
  config.batch_size = 2
  config.num_train_steps = 500
  config.log_every_steps = 25
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  config.num_overlays = 1
  config.optimizer.learning_rate = 1e-3
  if args.runlocal:
    common.shrink_for_local_run(config)
    config.data.patch_size = (16, 16, 16)
    config.model.features = (4, 8)
    config.batch_size = 2
    config.eval_split = "validation"
    config.test_split = "validation"
  if args.steps:
    config.num_train_steps = args.steps
  return config
