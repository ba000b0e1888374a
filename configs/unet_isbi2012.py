r"""2-D U-Net on the ISBI 2012 EM membranes (Ronneberger et al. 2015 data).

The data needs a manual directory (no download): either the PNG layout
``membrane/train/{image,label}/N.png`` or the organisers' TIFF stacks.

  python -m medseg_jax.main --config=configs/unet_isbi2012.py \
      --workdir=workdirs/unet_isbi2012 \
      --config.manual_dir=../shared/data/isbi2012_em_membrane

Fixed validation fold: slices 24-29 (a contiguous block, since neighbouring
sections are correlated); training uses slices 0-23. Classes: 0 cell
interior, 1 membrane. Arguments: ``fold=k`` (0-4) for 5-fold
cross-validation over the 30 slices, ``percent=`` and ``seed=`` as in
``configs/common.py``, ``slices=N`` to train on slices 0..N-1 only, and
``augment=NAME`` to add one of the augmentation lists in ``AUGMENT`` after
the base config's random flips (all run in the train step;
``--config.augment_on=host`` runs them in the input pipeline instead), and
``loss=NAME`` for a loss of ``common.LOSS_PRESETS`` (docs/losses.md).

Scarce labels, with and without elastic deformation (same budget):

  python -m medseg_jax.main \
      --config=configs/unet_isbi2012.py:slices=6,steps=500 \
      --workdir=workdirs/results/isbi6_none
  python -m medseg_jax.main \
      --config=configs/unet_isbi2012.py:slices=6,steps=500,augment=elastic \
      --workdir=workdirs/results/isbi6_elastic
"""

from configs import common

# Named augmentation lists for ``augment=NAME``, appended to the base
# config's flips (see medseg_jax/augment).
AUGMENT = {
  "none": [],
  # The U-Net paper's: random displacements on a coarse 3x3 grid, about
  # 10 pixels std, interpolated smoothly.
  "elastic": [dict(op="elastic", p=0.8, magnitude=(0.0, 10.0), grid=3)],
  # Graded MRI artefacts (docs/robustness.md).
  "artefacts": list(common.ARTEFACT_AUGMENT),
}


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    runlocal=False,
    steps=0,
    fold=-1,
    percent=100,
    seed=-1,
    slices=0,
    augment="none",
    loss="ce_dice",
  )
  config = common.base_config()
  config.dataset = "isbi2012_em"
  config.manual_dir = "../shared/data/isbi2012_em_membrane"
  config.test_split = "validation"  # The ISBI test labels were never released.
  config.data.patch_size = (256, 256)
  config.model.features = (16, 32, 64, 128, 256)
  config.batch_size = 4
  config.num_train_steps = 1500
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 250
  config.optimizer.learning_rate = 1e-3
  if args.runlocal:
    common.shrink_for_local_run(config)
    # The validation split has 6 slices: "validation[:8]" would not exist.
    config.eval_split = config.test_split = "validation"
  if args.steps:
    config.num_train_steps = args.steps
  if args.fold >= 0:
    set_fold(config, args.fold)
  if args.slices:
    if args.fold >= 0:
      raise ValueError(
        "slices= trains on slices 0..N-1 of the fixed split; with fold= use "
        "percent= instead."
      )
    if not 0 < args.slices <= 24:
      raise ValueError(f"slices must be in [1, 24]; got {args.slices}.")
    config.train_split = f"train[:{args.slices}]"
  if args.augment not in AUGMENT:
    raise ValueError(
      f"Unknown augment={args.augment!r}; valid: {sorted(AUGMENT)}."
    )
  # The base config's random flips, then the named list.
  config.augment = [*config.augment, *map(dict, AUGMENT[args.augment])]
  common.apply_data_args(config, args)
  common.apply_loss_arg(config, args.loss)
  return config


NUM_FOLDS = 5


def set_fold(config, fold: int) -> None:
  """Cross-validation over the 30 slices in 5 contiguous folds of 6.

  Fold ``k`` validates on slices ``6k .. 6k+5`` and trains on the other 24
  (fold 4 is the builder's fixed ``validation`` split). Contiguous folds,
  because neighbouring sections are nearly identical.
  """
  if not 0 <= fold < NUM_FOLDS:
    raise ValueError(f"fold must be in [0, {NUM_FOLDS}); got {fold}.")
  if fold == NUM_FOLDS - 1:
    held_out, rest = "validation", "train"
  else:
    start, stop = 6 * fold, 6 * fold + 6
    held_out = f"train[{start}:{stop}]"
    parts = [f"train[:{start}]"] if start else []
    parts += [f"train[{stop}:]", "validation"]
    rest = "+".join(parts)
  config.train_split = rest
  config.eval_split = held_out
  config.test_split = held_out
