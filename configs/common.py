"""Shared config pieces. Each experiment file calls these and overrides.

A config argument (``--config=configs/x.py:runlocal,steps=50``) is parsed by
``parse_arg`` into a ConfigDict of typed options.
"""

from __future__ import annotations

import os

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses ``"flag,key=value"`` against typed ``defaults``.

  A bare word sets a boolean default to True; ``key=value`` is converted to
  the default's type. Unknown keys raise with the valid ones listed.
  """
  out = ml_collections.ConfigDict(defaults)
  for part in filter(None, (arg or "").split(",")):
    key, _, value = part.partition("=")
    if key not in defaults:
      raise ValueError(
        f"Unknown config argument {key!r}; valid: {sorted(defaults)}."
      )
    kind = type(defaults[key])
    if not value:
      if kind is not bool:
        raise ValueError(f"Config argument {key!r} needs a value.")
      out[key] = True
    elif kind is bool:
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      out[key] = kind(value)
  return out


# Training with MRI artefacts (docs/robustness.md): half the examples get
# one graded corruption of medseg_jax.corruptions, drawn uniformly, at a
# severity uniform in [0, 5]; the label is untouched.
ARTEFACT_AUGMENT = (
  dict(op="corruption", p=0.5, names="all", severity=(0.0, 5.0)),
)


def base_config() -> ml_collections.ConfigDict:
  """Fields every supervised experiment has, with neutral defaults."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = "synthetic_phantoms/2d"
  config.data_dir = os.environ.get("MEDSEG_DATA_DIR", "~/tensorflow_datasets")
  config.manual_dir = ""
  config.train_split = "train"
  config.eval_split = "validation"
  config.test_split = "test"

  config.data = ml_collections.ConfigDict()
  config.data.patch_size = (128, 128)
  # True: the trainer shrinks patch_size per axis to the training cases'
  # median shape (rounded down to the network's multiple) and records why
  # in patch_reason (medseg_jax/plan.py).
  config.data.auto_patch = False
  config.data.patch_reason = ""
  config.data.pad_multiple = 0  # 0: 2 ** (number of levels - 1).
  config.data.worker_count = 0  # grain worker processes; 0 = in-process.
  # Share of the training split used (its first cases), in percent.
  config.data.train_percent = 100
  config.data.read_threads = 2
  config.data.prefetch_buffer_size = 8
  # What the grain pipeline does to each example before batching: only
  # normalize, random_crop_or_pad and center_pad (medseg_jax/data/
  # transforms.py). Evaluation and prediction reuse the normalize entry.
  config.data.train_transforms = [
    dict(op="normalize", mode="zscore"),
    dict(op="random_crop_or_pad"),  # size defaults to data.patch_size.
  ]

  # Every augmentation, per example: dict(op=..., p=..., **options) of
  # medseg_jax/augment, e.g. dict(op="elastic", p=0.3, magnitude=(0, 8));
  # unknown ops or bad ranges fail at start-up. The default mirrors each
  # spatial axis with probability 0.5 (axes=None: every axis, 2-D or 3-D).
  # augment_on="device" runs the list inside the jitted train step; "host"
  # runs the same functions, with the same keys, in the grain pipeline on
  # the CPU (in the workers if data.worker_count > 0).
  config.augment = [dict(op="flip", axis_p=0.5)]
  config.augment_on = "device"

  config.model = ml_collections.ConfigDict()
  config.model.name = "unet"
  config.model.features = (32, 64, 128, 256)
  config.model.norm = "instance"
  config.model.upsample = "transpose"  # The paper's 2x2 up-convolution.
  # "bfloat16": bfloat16 activations and convolutions; parameters, logits
  # and the loss stay float32.
  config.model.dtype = "float32"
  # Recompute each block's activations in the backward pass (less memory,
  # about one more forward pass of compute); unet, attention_unet, vnet.
  config.model.remat = False

  # Device mesh (see medseg_jax/sharding.py): batches split over "data";
  # spatial > 1 also splits 3-D volumes and activations along depth.
  # -1: the remaining devices. The default is plain data parallelism.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, spatial=1))

  # One loss of medseg_jax.losses.LOSSES with its options (e.g.
  # config.loss.dice_weight = 0.5), or a weighted sum set by loss_terms():
  # config.loss = ConfigDict(dict(terms=[dict(name="cross_entropy",
  # weight=1.0), dict(name="cldice", weight=0.5, iterations=3)])). Names,
  # options and values are checked at start-up; see docs/losses.md. A
  # "boundary" term makes the pipeline add signed distance maps (needs
  # augment_on="host" with geometric augmentations).
  config.loss = ml_collections.ConfigDict()
  config.loss.name = "ce_dice"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 50
  config.optimizer.weight_decay = 1e-4
  config.optimizer.grad_clip_norm = 1.0
  # [dict(pattern=regex, freeze=True) or dict(pattern=regex, lr_scale=0.1)].
  config.optimizer.param_groups = []

  # Evaluation (the final test report and `python -m medseg_jax.evaluate`).
  config.eval = ml_collections.ConfigDict()
  config.eval.surface_metrics = True  # HD95, HD, ASSD, NSD in the report.
  config.eval.nsd_tolerance_mm = 1.0
  config.eval.sliding_window = False  # Else whole images, padded.
  config.eval.window = ()  # Default: data.patch_size.
  config.eval.overlap = 0.5
  config.eval.sw_batch_size = 4
  config.eval.tta_flip_axes = ()  # e.g. (0, 1): average over all flips.
  config.eval.largest_component = False

  config.batch_size = 16
  config.num_train_steps = 1000
  config.log_every_steps = 50
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 250
  config.keep_checkpoints = 3
  config.num_overlays = 5
  config.writer = "tensorboard"
  config.resume_from = ""
  config.init_from = ""  # Another run's workdir: weights only.
  config.init_include = []  # Regexes over parameter paths (empty: all).
  config.init_exclude = []  # e.g. ["^head/"] to re-learn the classifier.
  config.init_rename = []  # [(pattern, replacement)] target -> source name.
  config.init_upkern = False  # Resize smaller source kernels (MedNeXt).
  return config


def loss_terms(config: ml_collections.ConfigDict, *terms: dict) -> None:
  """Sets ``config.loss`` to the weighted sum of ``terms``, in place.

  Each term is ``dict(name=NAME, weight=W, **options)`` with ``NAME`` in
  ``medseg_jax.losses.LOSSES`` (``weight`` defaults to 1), e.g.
  ``loss_terms(config, dict(name="cross_entropy"), dict(name="cldice",
  weight=0.5, iterations=3))``. Replaces ``config.loss.name`` and its
  options, which cannot be combined with terms.
  """
  if not terms:
    raise ValueError("loss_terms needs at least one term.")
  config.loss = ml_collections.ConfigDict(
    dict(terms=[dict(term) for term in terms])
  )


# Named losses for a config's ``loss=NAME`` argument (the loss benchmark,
# configs/benchmarks/losses.py): each a list of terms for loss_terms, or
# None for the base config's ce_dice. Pairings and weights follow the
# papers: clDice beside soft Dice with alpha = 0.5 (Shit et al.), the
# boundary loss beside generalised Dice at 0.01 (Kervadec et al.'s
# starting weight, kept fixed here).
LOSS_PRESETS = {
  "ce_dice": None,
  "cldice": [
    dict(name="dice", weight=0.5),
    dict(name="cldice", weight=0.5, iterations=3),
  ],
  "boundary": [
    dict(name="generalized_dice", weight=1.0),
    dict(name="boundary", weight=0.01),
  ],
  "generalized_dice": [dict(name="generalized_dice")],
  "focal": [dict(name="focal", gamma=2.0)],
  "tversky": [dict(name="tversky", alpha=0.3, beta=0.7)],
  "focal_tversky": [dict(name="focal_tversky", gamma=4 / 3)],
  "cross_entropy": [dict(name="cross_entropy")],
  "dice": [dict(name="dice")],
}


def apply_loss_arg(config: ml_collections.ConfigDict, name: str) -> None:
  """Sets the loss named ``name`` in :data:`LOSS_PRESETS`, in place.

  A preset with a boundary term also moves ``config.augment`` to the host
  (``augment_on="host"``), since its distance maps are computed there
  after the augmentation (docs/losses.md).
  """
  if name not in LOSS_PRESETS:
    raise ValueError(f"Unknown loss={name!r}; valid: {sorted(LOSS_PRESETS)}.")
  terms = LOSS_PRESETS[name]
  if terms is None:
    return
  loss_terms(config, *terms)
  if any(t["name"] == "boundary" for t in terms) and config.augment:
    config.augment_on = "host"


def shrink_for_local_run(config: ml_collections.ConfigDict) -> None:
  """Makes a config finish in seconds on a laptop CPU (``runlocal``)."""
  config.num_train_steps = 20
  config.log_every_steps = 5
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 10
  config.batch_size = 8
  config.eval_split = config.eval_split + "[:8]"
  config.test_split = config.test_split + "[:8]"
  config.model.features = (8, 16)
  config.data.patch_size = (64,) * len(config.data.patch_size)
  config.writer = "logging"


def apply_data_args(config: ml_collections.ConfigDict, args) -> None:
  """Applies the shared experiment arguments ``percent``, ``seed``, ``fg``.

  ``percent`` (1-100) keeps that share of the training split (the first
  cases of it, so smaller shares are subsets of larger ones), for studies of
  how the amount of labelled data changes the result. ``seed`` sets the run
  seed (initialisation and data order). ``fg`` (0-1) is the share of
  training patches centred on a foreground voxel (see
  ``transforms.RandomCropOrPad``).
  """
  percent = args.get("percent", 100)
  if not 0 < percent <= 100:
    raise ValueError(f"percent must be in (0, 100]; got {percent}.")
  config.data.train_percent = percent
  if args.get("seed", -1) >= 0:
    config.seed = args.seed
  share = args.get("fg", -1.0)
  if share >= 0:
    transforms = []
    for spec in config.data.train_transforms:
      spec = dict(spec)
      if spec["op"] == "random_crop_or_pad":
        spec["foreground_share"] = share
      transforms.append(spec)
    config.data.train_transforms = transforms


def classical_baselines(
  config: str, methods: tuple[tuple[str, str], ...]
) -> list[dict]:
  """Benchmark-suite baseline rows for the 4-class synthetic phantoms.

  Each `(name, method)` becomes a row that clusters the image into 4
  intensity classes and maps clusters to labels with a mapping fitted on
  the training split of `config`'s dataset.
  """
  return [
    dict(
      name=name,
      method=method,
      config=config,
      kwargs=dict(num_clusters=4, fit_mapping=True),
    )
    for name, method in methods
  ]


def adversarial_config(
  config: ml_collections.ConfigDict, critic: str = "segan"
) -> None:
  """Makes `config` an adversarial run (medseg_jax/train_adversarial.py).

  Sets `config.trainer = "adversarial"` and `config.adversarial`: the
  critic (`"segan"` or `"patchgan"`, with its options), the GAN loss of a
  PatchGAN, the adversarial weight, critic steps per segmentor step, SegAN's
  weight clipping, and the critic's optimizer (Adam, constant rate, as in
  pix2pix and SegAN).
  """
  config.trainer = "adversarial"
  adv = ml_collections.ConfigDict()
  if critic == "segan":
    # Xue et al.: 4x4 stride-2 convolutions of 64, 128, 256 channels and
    # critic weights clipped to [-0.05, 0.05].
    adv.critic = ml_collections.ConfigDict(
      dict(
        name="segan",
        features=(64, 128, 256),
        norm="instance",
        spectral_norm=False,
      )
    )
    adv.critic_clip = 0.05
  elif critic == "patchgan":
    # pix2pix: 3 layers, ndf 64, LeakyReLU 0.2, least-squares loss.
    adv.critic = ml_collections.ConfigDict(
      dict(
        name="patchgan",
        ndf=64,
        num_layers=3,
        norm="instance",
        spectral_norm=False,
      )
    )
    adv.critic_clip = 0.0
  else:
    raise ValueError(
      f"Unknown critic {critic!r}; valid: ['patchgan', 'segan']."
    )
  adv.loss = "least_squares"  # PatchGAN only: least_squares, hinge, bce.
  adv.weight = 0.1
  adv.start_step = 0
  adv.critic_steps = 1
  adv.optimizer = ml_collections.ConfigDict(
    dict(
      name="adam",
      learning_rate=2e-4,
      schedule="constant",
      warmup_steps=0,
      grad_clip_norm=0.0,
    )
  )
  config.adversarial = adv


def ssl_config(
  config: ml_collections.ConfigDict, pretext: str = "models_genesis"
) -> None:
  """Makes `config` a self-supervised pretraining run (medseg_jax/train_ssl.py).

  Sets `config.trainer = "ssl"` and `config.ssl`: the pretext task (a name
  of `medseg_jax.pretext.PRETEXTS`) with its options (empty: the task's
  defaults) and the reconstruction distance. Labels are never read, so
  foreground-centred crops are turned off.
  """
  config.trainer = "ssl"
  config.ssl = ml_collections.ConfigDict()
  config.ssl.pretext = pretext
  config.ssl.options = ml_collections.ConfigDict()
  if pretext == "simmim":
    config.ssl.options.patch = 16
    config.ssl.options.ratio = 0.6
  config.ssl.loss = "mse"
  config.data.train_transforms = [
    dict(spec, foreground_share=0.0)
    if spec["op"] == "random_crop_or_pad"
    else dict(spec)
    for spec in config.data.train_transforms
  ]
