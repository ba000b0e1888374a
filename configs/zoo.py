r"""The model zoo side by side: any registered architecture on any dataset.

  python -m medseg_jax.main --config=configs/zoo.py:model=deeplabv3plus \
      --workdir=workdirs/zoo/deeplabv3plus_synthetic2d
  python -m medseg_jax.main --config=configs/zoo.py:model=fcn8s,data=isbi \
      --workdir=workdirs/zoo/fcn8s_isbi
  python -m medseg_jax.main --config=configs/zoo.py:model=vnet,data=synthetic3d \
      --workdir=workdirs/zoo/vnet_synthetic3d

Models (``model=``): see ``MODELS`` below; the widths are CPU-sized (the
published sizes are the constructors' defaults and are what the parameter
count tests check). Data (``data=``): ``synthetic2d`` (default),
``synthetic3d``, ``isbi`` (needs ``--config.manual_dir``, default
``../shared/data/isbi2012_em_membrane``), ``lesjak`` (the 3-case MS lesion
subset, default ``../shared/data/open_ms_data_lesjak2017``). Add ``runlocal`` for a
seconds-long smoke run, ``percent=`` to train on a share of the training
split, ``seed=``, ``fold=0..4`` for ISBI cross-validation, and ``fg=0.33``
for a share of foreground-centred training patches.
"""

import ml_collections

from configs import common
from configs import unet3d_lesjak
from configs import unet3d_synthetic
from configs import unet_isbi2012
from configs import unet_synthetic
from medseg_jax import models

# Preset name -> (model fields, spatial dims it supports).
MODELS = {
  "unet": (
    dict(name="unet", features=(16, 32, 64, 128), norm="instance"),
    (2, 3),
  ),
  "unet_residual_ds": (
    dict(
      name="unet",
      features=(16, 32, 64, 128),
      norm="instance",
      residual=True,
      deep_supervision=True,
    ),
    (2, 3),
  ),
  "attention_unet": (
    dict(name="attention_unet", features=(16, 32, 64, 128), norm="instance"),
    (2, 3),
  ),
  "fcn32s": (
    dict(name="fcn", variant="32s", backbone="resnet50", width=0.25),
    (2,),
  ),
  "fcn16s": (
    dict(name="fcn", variant="16s", backbone="resnet50", width=0.25),
    (2,),
  ),
  "fcn8s": (
    dict(name="fcn", variant="8s", backbone="resnet50", width=0.25),
    (2,),
  ),
  "fcn8s_vgg16": (
    dict(name="fcn", variant="8s", backbone="vgg16", width=0.125),
    (2,),
  ),
  "deeplabv3": (
    dict(
      name="deeplabv3",
      backbone="resnet50",
      width=0.25,
      aspp_features=64,
      output_stride=16,
    ),
    (2,),
  ),
  "deeplabv3plus": (
    dict(
      name="deeplabv3plus",
      backbone="resnet50",
      width=0.25,
      aspp_features=64,
      decoder_features=64,
      low_level_features=16,
      output_stride=16,
    ),
    (2,),
  ),
  # Cicek's layout at 1/4 of the paper's widths (8-64; the paper has 32-256
  # with 512 at the bottom).
  "unet3d": (
    dict(
      name="unet",
      features=(8, 16, 32, 64),
      norm="instance",
      double_within_level=True,
    ),
    (3,),
  ),
  # V-Net's topology at CPU size: 3^d kernels instead of the paper's 5^d
  # (kernel_size=5 restores them, at about 4.6x the cost in 3-D).
  "vnet": (
    dict(
      name="vnet",
      features=(8, 16, 32, 64),
      convs=(1, 2, 2, 2),
      kernel_size=3,
      norm="instance",
    ),
    (3, 2),
  ),
  # nnU-Net's ResEnc rule (blocks 1, 3, 4, 6; instance norm; LeakyReLU;
  # deep supervision) at half its 32-channel base width and four stages.
  "resenc_unet": (
    dict(
      name="resenc_unet",
      features=(16, 32, 64, 128),
      blocks_per_stage=(1, 3, 4, 6),
      deep_supervision=True,
    ),
    (2, 3),
  ),
  # MedNeXt-S (expansion 2, two blocks per stage, kernel 3) at half the
  # paper's 32-channel base width; kernel_size=5 for UpKern from it.
  "mednext": (
    dict(
      name="mednext",
      size="S",
      kernel_size=3,
      base_features=16,
      deep_supervision=True,
    ),
    (2, 3),
  ),
  # UNETR with a narrower, shallower ViT than the paper's 768-wide,
  # 12-layer one (the constructor's defaults); same 16^d patches, skips
  # from layers 2, 4 and 6 of 8.
  "unetr": (
    dict(
      name="unetr",
      patch_size=16,
      hidden_size=192,
      mlp_dim=768,
      num_layers=8,
      num_heads=6,
      feature_size=16,
    ),
    (2, 3),
  ),
  # SwinUNETR at MONAI's smaller width (feature_size=24; the paper has 48),
  # otherwise the published layout: patch 2, window 7, depths 2-2-2-2.
  "swin_unetr": (
    dict(
      name="swin_unetr",
      feature_size=24,
      depths=(2, 2, 2, 2),
      num_heads=(3, 6, 12, 24),
      window_size=7,
    ),
    (2, 3),
  ),
}

# Smaller fields for `runlocal`, for presets without a `features` list.
RUNLOCAL = {
  "mednext": dict(base_features=4, blocks=(1,) * 5, expansion=(2,) * 5),
  "unetr": dict(hidden_size=32, mlp_dim=64, num_layers=4, num_heads=2),
  "swin_unetr": dict(feature_size=12, depths=(2, 2), num_heads=(3, 6)),
}

DATA = {
  "synthetic2d": unet_synthetic.get_config,
  "synthetic3d": unet3d_synthetic.get_config,
  "isbi": unet_isbi2012.get_config,
  "lesjak": unet3d_lesjak.get_config,
}


def _round_patch_to_model(config: ml_collections.ConfigDict) -> None:
  """Rounds the dataset's patch up to a size the model accepts.

  Transformers need spatial multiples of their token grid (SwinUNETR with
  patch 2 and four stages: 32; UNETR: 16), which a dataset preset written
  for U-Nets need not be (Lesjak's 48^3 for SwinUNETR becomes 64^3).
  """
  multiple = models.pad_multiple(config)
  patch = tuple(config.data.patch_size)
  rounded = tuple(-(-size // multiple) * multiple for size in patch)
  if rounded != patch:
    config.data.patch_size = rounded


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    model="unet",
    data="synthetic2d",
    runlocal=False,
    steps=0,
    percent=100,
    seed=-1,
    fold=-1,
    fg=-1.0,
  )
  if args.model not in MODELS:
    raise ValueError(
      f"Unknown model preset {args.model!r}; valid: {sorted(MODELS)}."
    )
  if args.data not in DATA:
    raise ValueError(f"Unknown data {args.data!r}; valid: {sorted(DATA)}.")
  config = DATA[args.data]("runlocal" if args.runlocal else None)
  fields, dims = MODELS[args.model]
  spatial_dims = len(config.data.patch_size)
  if spatial_dims not in dims:
    raise ValueError(
      f"Model preset {args.model!r} is for {dims}-D data; {args.data!r} is "
      f"{spatial_dims}-D."
    )
  config.model = ml_collections.ConfigDict(fields)
  if args.runlocal and "features" in fields:
    config.model.features = (
      (4, 8, 16) if fields.get("deep_supervision") else (8, 16)
    )
    if "convs" in fields:
      config.model.convs = (1, 1)
    if "blocks_per_stage" in fields:
      config.model.blocks_per_stage = (1, 1, 1)
  if args.runlocal and args.model in RUNLOCAL:
    config.model.update(RUNLOCAL[args.model])
  _round_patch_to_model(config)
  if args.steps:
    config.num_train_steps = args.steps
  if args.fold >= 0:
    if args.data != "isbi":
      raise ValueError("fold= is for data=isbi (5-fold over its 30 slices).")
    unet_isbi2012.set_fold(config, args.fold)
  common.apply_data_args(config, args)
  return config
