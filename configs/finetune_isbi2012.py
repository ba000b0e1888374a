r"""Few labels: fine-tune on N labelled ISBI 2012 slices, pretrained or not.

After ``configs/ssl_isbi2012.py`` (self-supervised, 60 slices):

  python -m medseg_jax.main \
      --config=configs/finetune_isbi2012.py:labels=4,seed=0,init=pretrained \
      --workdir=workdirs/finetune/l4_s0_pretrained
  python -m medseg_jax.main \
      --config=configs/finetune_isbi2012.py:labels=4,seed=0,init=scratch \
      --workdir=workdirs/finetune/l4_s0_scratch

Arguments: ``labels=N`` trains on slices 0..N-1 (1-24); ``seed=S``;
``init=pretrained`` loads every weight of the run at ``pretrained=``
(default ``workdirs/ssl_isbi2012``) except the output head, which starts
fresh (image channels there, classes here); ``init=scratch`` starts from
random weights with the same budget; ``encoder_lr=0.1`` scales the
encoder's learning rate (the ``down_``/``bottleneck`` parameters) for the
"lower encoder learning rate" recipe; ``steps=``. Both inits use the same
warm-up (``optimizer.warmup_steps``). The held-out slices are 24-29,
scored by pooled membrane Dice in ``eval/`` (docs/pretraining.md).
``runlocal`` runs on the synthetic phantoms in seconds, from
``pretrained=/tmp/ssl_local`` (``configs/ssl_isbi2012.py:runlocal``).
"""

from configs import common
from configs import ssl_isbi2012
from configs import unet_isbi2012
from configs import unet_synthetic

INITS = ("pretrained", "scratch")


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    labels=4,
    seed=0,
    init="pretrained",
    pretrained="workdirs/ssl_isbi2012",
    encoder_lr=1.0,
    steps=300,
    runlocal=False,
  )
  if args.init not in INITS:
    raise ValueError(f"Unknown init={args.init!r}; valid: {list(INITS)}.")
  if args.runlocal:
    config = unet_synthetic.get_config("runlocal")
  else:
    config = unet_isbi2012.get_config()
    if not 0 < args.labels <= 24:
      raise ValueError(f"labels must be in [1, 24]; got {args.labels}.")
    config.train_split = f"train[:{args.labels}]"
    config.data.patch_size = ssl_isbi2012.PATCH
    config.batch_size = 4
    config.num_train_steps = args.steps
    config.eval_every_steps = args.steps  # Validation = the held-out test.
    config.checkpoint_every_steps = args.steps
    config.eval.surface_metrics = False
    config.writer = "logging"
  # Must be the pretraining run's architecture.
  config.model = ssl_isbi2012.model(args.runlocal)
  config.seed = args.seed
  if args.init == "pretrained":
    config.init_from = args.pretrained
    config.init_exclude = ["^head/"]
  if args.encoder_lr != 1.0:
    config.optimizer.param_groups = [
      dict(pattern="^(down_|bottleneck)", lr_scale=args.encoder_lr)
    ]
  return config
