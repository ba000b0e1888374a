r"""The config a dataset's plan describes (see medseg_jax/plan.py).

Plan a folder once, then train from the plan (all folds, or one):

  python -m medseg_jax.plan --folder=/data/my_study
  python -m medseg_jax.main --config=configs/auto.py:folder=/data/my_study \
      --workdir=workdirs/my_study
  python -m medseg_jax.main \
      --config=configs/auto.py:folder=/data/my_study,fold=0 \
      --workdir=workdirs/my_study_cv/fold_0

``folder=DIR`` reads ``DIR/medseg_plan/plan.json``; ``plan=PATH`` reads any
plan file or directory (e.g. one made with ``--dataset=isbi2012_em
--output=plans/isbi2012_em``). ``fold=k`` trains on every block of the
training pool but the ``k``-th and validates and tests on that one.
``steps=N`` overrides the plan's step budget; ``runlocal`` shrinks the run
to seconds. Any other change: edit ``plan.json`` (each decision's
``value``; its ``reason`` is for people) or override a field on the command
line (``--config.batch_size=4``). A plan with a bad field is refused with
the field named.
"""

import pathlib

from configs import common
from medseg_jax import plan as plan_lib


def get_config(arg=None):
  args = common.parse_arg(
    arg, folder="", plan="", fold=-1, steps=0, runlocal=False
  )
  if bool(args.folder) == bool(args.plan):
    raise ValueError(
      "configs/auto.py needs folder=<data folder> (its plan is "
      f"<folder>/{plan_lib.DEFAULT_OUTPUT}/plan.json) or plan=<plan file or "
      "directory>, e.g. --config=configs/auto.py:folder=/data/my_study; "
      "make the plan with python -m medseg_jax.plan --folder=/data/my_study."
    )
  path = (
    pathlib.Path(args.folder).expanduser() / plan_lib.DEFAULT_OUTPUT
    if args.folder
    else pathlib.Path(args.plan).expanduser()
  )
  plan = plan_lib.load_plan(path)
  # An edited target spacing re-derives the folder's planned dataset.json.
  plan_lib.sync_data_folder(plan)
  config = plan_lib.config_from_plan(plan, fold=args.fold)
  if args.runlocal:
    config.num_train_steps = 10
    config.log_every_steps = 5
    config.eval_every_steps = 10
    config.checkpoint_every_steps = 10
    config.optimizer.warmup_steps = 2
    config.batch_size = min(config.batch_size, 2)
    config.writer = "logging"
  if args.steps:
    config.num_train_steps = args.steps
    every = max(args.steps // 5, 1)
    config.eval_every_steps = every
    config.checkpoint_every_steps = every
    config.log_every_steps = min(50, every)
    config.optimizer.warmup_steps = min(50, max(args.steps // 10, 1))
  return config
