r"""Self-supervised pretraining on all 60 ISBI 2012 EM slices, no labels.

The 30 slices of the training stack and the 30 of the test stack (whose
labels were never released) as one label-free `from_folder` dataset,
written once by

  python -m medseg_jax.data.from_folder.unlabelled \
      --out=workdirs/data/isbi2012_unlabelled --name=isbi2012_unlabelled \
      --spatial_dims=2 --channel=EM \
      ../shared/data/isbi2012_em_membrane/membrane/train/image \
      ../shared/data/isbi2012_em_membrane/membrane/test

then

  python -m medseg_jax.main --config=configs/ssl_isbi2012.py \
      --workdir=workdirs/ssl_isbi2012

  # seconds on a laptop CPU, on the synthetic phantoms (labels ignored):
  python -m medseg_jax.main --config=configs/ssl_isbi2012.py:runlocal \
      --workdir=/tmp/ssl_local

Fine-tune with ``configs/finetune_isbi2012.py`` (docs/pretraining.md).
Arguments: ``pretext=`` a name of `medseg_jax.pretext.PRETEXTS`
(``models_genesis``, the default, or ``simmim``), ``steps=``, ``seed=``,
``folder=`` the label-free folder. The model is `MODEL`, which the
fine-tuning config shares, so that every weight but the head transfers.
"""

import ml_collections

from configs import common

FOLDER = "workdirs/data/isbi2012_unlabelled"
# Shared with configs/finetune_isbi2012.py: the same U-Net, so that every
# weight but the output head (image channels here, classes there) loads.
PATCH = (128, 128)


def model(runlocal: bool = False) -> ml_collections.ConfigDict:
  """The U-Net that pretraining and fine-tuning share."""
  config = common.base_config().model
  config.features = (8, 16) if runlocal else (8, 16, 32, 64)
  return config


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    runlocal=False,
    steps=0,
    seed=-1,
    pretext="models_genesis",
    folder=FOLDER,
  )
  config = common.base_config()
  config.dataset = "from_folder"
  config.manual_dir = args.folder
  config.train_split = "train"
  config.data.patch_size = PATCH
  config.model = model(args.runlocal)
  config.batch_size = 4
  config.num_train_steps = 600
  config.checkpoint_every_steps = 200
  config.eval_every_steps = 200  # Checkpoints only: nothing is labelled.
  config.optimizer.learning_rate = 1e-3
  common.ssl_config(config, args.pretext)
  if args.runlocal:
    config.dataset = "synthetic_phantoms/2d"
    config.manual_dir = ""
    common.shrink_for_local_run(config)
    config.model = model(True)
  if args.steps:
    config.num_train_steps = args.steps
  common.apply_data_args(config, args)
  return config
