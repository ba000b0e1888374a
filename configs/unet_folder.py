r"""U-Net on your own data: a folder of images, labels and a dataset.json.

  python -m medseg_jax.main \
      --config=configs/unet_folder.py:folder=/data/my_study,patch=96 \
      --workdir=workdirs/my_study

The folder holds ``images/``, ``labels/`` (NIfTI, PNG/JPEG, TIFF, MetaImage
or DICOM series folders, paired by name) and ``dataset.json`` with the
channel and class names, the normalisation and the splits; see
``medseg_jax/data/from_folder/from_folder.py``. The dataset is built once
into ``data_dir`` (as ``from_folder/<name>``) and read from there. The
U-Net is 2-D or 3-D to match ``spatial_dims`` in the JSON. Without
``patch=``, the patch is 128 (2-D) or 64 (3-D) per axis, shrunk to the
training cases' median shape where the cases are smaller.
"""

from configs import common
from medseg_jax.data import registry


def get_config(arg=None):
  args = common.parse_arg(arg, folder="", patch=0, steps=0, runlocal=False)
  if not args.folder:
    raise ValueError(
      "configs/unet_folder.py needs folder=<path to your data folder>, e.g. "
      "--config=configs/unet_folder.py:folder=/data/my_study"
    )
  spec = registry.get_dataset_spec(registry.FROM_FOLDER, args.folder)
  config = common.base_config()
  config.dataset = registry.FROM_FOLDER
  config.manual_dir = args.folder
  dims = spec.spatial_dims
  config.eval_split = "validation" if "validation" in spec.splits else "train"
  config.test_split = "test" if "test" in spec.splits else config.eval_split
  config.data.patch_size = (args.patch or (128 if dims == 2 else 64),) * dims
  # Without patch=, the default shrinks to the median case shape (in the
  # trainer, once the dataset is built); the run's log says what it chose.
  config.data.auto_patch = not args.patch
  # dataset.json's normalisation is applied at build time.
  config.data.train_transforms = [
    dict(op="random_crop_or_pad", foreground_share=0.33),
  ]
  if dims == 3:
    config.model.features = (8, 16, 32, 64)
    config.model.double_within_level = True
    config.batch_size = 2
  else:
    config.model.features = (16, 32, 64, 128)
    config.batch_size = 8
  if args.runlocal:
    common.shrink_for_local_run(config)
    config.data.patch_size = (args.patch or 16,) * dims
    config.model.features = (4, 8)
    config.batch_size = 2
    config.eval_split = config.eval_split.split("[")[0]
    config.test_split = config.test_split.split("[")[0]
  if args.steps:
    config.num_train_steps = args.steps
  return config
