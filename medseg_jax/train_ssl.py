"""Self-supervised pretraining of a segmentation network on unlabelled scans.

``train_and_evaluate(config, workdir)`` trains the model of
``config.model`` to restore images corrupted by a pretext task
(`medseg_jax.pretext`), reading the training split of any dataset with its
labels ignored (or a label-free ``from_folder`` dataset):

  mesh -> data -> model (reconstruction head) and optimizer -> restore
  -> jitted step (corrupt, reconstruct, weighted L2/L1) -> loop
  -> pretraining.json beside the checkpoints.

The config, mesh, data iterator (with its state in every checkpoint),
restore order, training loop, checkpoints, writer and console are
`train.py`'s own functions; only the step differs, and there is no
validation (nothing is labelled). Chosen with ``config.trainer = "ssl"``
(see `main.py`); options in ``config.ssl``:

* ``pretext``: a name of `pretext.PRETEXTS` (``"models_genesis"``,
  ``"simmim"``, or one Models Genesis corruption alone) and ``options``,
  its keyword options;
* ``loss``: ``"mse"`` or ``"l1"`` (`pretext.LOSSES`).

The reconstruction head is the segmentation model's own output layer,
built with as many outputs as the image has channels (``head/`` in the
U-Nets): every other weight, encoder and decoder alike, has the shape it
has in the segmentation model, so all of them transfer through
``config.init_from``, and only the head (channels -> classes) starts fresh
when fine-tuning (``init_exclude=["^head/"]``). See docs/pretraining.md.
"""

import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from medseg_jax import checkpointing
from medseg_jax import pretext as pretext_lib
from medseg_jax import train
from medseg_jax.data import registry

METADATA_FILE = "pretraining.json"


def check_config(config: ml_collections.ConfigDict) -> pretext_lib.Pretext:
  """Fails fast on a bad ``config.ssl``; returns its pretext task."""
  ssl = config.get("ssl")
  if ssl is None:
    raise ValueError(
      "config.trainer='ssl' needs config.ssl (see configs/common.py "
      "ssl_config)."
    )
  if ssl.get("loss", "mse") not in pretext_lib.LOSSES:
    raise ValueError(
      f"Unknown config.ssl.loss {ssl.loss!r}; valid: {pretext_lib.LOSSES}."
    )
  return pretext_lib.from_config(ssl)


def ssl_loss(
  state: train.TrainState,
  params: Any,
  inputs: dict[str, jax.Array],
  mask: jax.Array,
  rng: jax.Array,
  kind: str,
) -> tuple[jax.Array, Any]:
  """The batch-mean reconstruction loss of ``params`` on a pretext batch
  (`pretext.Pretext` output; ``mask: f32[B, *S]`` zero on padding), and the
  model's variable updates."""
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  prediction, updates = state.apply_fn(
    variables,
    inputs["image"],
    train=True,
    mutable=["batch_stats", "aux_logits"],
    rngs={"dropout": rng},
  )
  per_example = pretext_lib.reconstruction_loss(
    prediction, inputs["target"], inputs["weight"] * mask, kind
  )
  return jnp.mean(per_example), updates


def _train_step(
  state: train.TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  pretext: pretext_lib.Pretext,
  kind: str,
  schedule,
  augment=None,
) -> tuple[train.TrainState, train.TrainMetrics, jax.Array]:
  """Augment, corrupt, reconstruct, one update; pure, compiled once.

  The keys depend only on the seed and the step, so a resumed run
  corrupts the same batches the same way.
  """
  rng = jax.random.fold_in(rng, state.step)
  if augment is not None:
    rng, augment_rng = jax.random.split(rng)
    batch = augment(augment_rng, batch)
  rng, pretext_rng = jax.random.split(rng)
  inputs = pretext(pretext_rng, batch["image"])

  def objective(params):
    return ssl_loss(state, params, inputs, batch["mask"], rng, kind)

  return train.update(state, objective, schedule)


def metadata(config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
  """What a pretraining checkpoint was trained on, for `METADATA_FILE`."""
  return {
    "trainer": "ssl",
    "pretext": config.ssl.pretext,
    "options": dict(config.ssl.get("options", None) or {}),
    "loss": config.ssl.get("loss", "mse"),
    "dataset": config.dataset,
    "manual_dir": config.get("manual_dir", ""),
    "train_split": config.train_split,
    "patch_size": list(config.data.patch_size),
    "batch_size": config.batch_size,
    "steps": step,
    "num_train_steps": config.num_train_steps,
    "model": config.model.to_dict(),
  }


def write_metadata(workdir, config: ml_collections.ConfigDict, step: int):
  if jax.process_index() == 0:
    (workdir / METADATA_FILE).write_text(
      json.dumps(metadata(config, step), indent=2, default=str) + "\n"
    )


def read_metadata(workdir) -> dict[str, Any] | None:
  """A pretraining run's `METADATA_FILE`, or None if it has none."""
  path = checkpointing.absolute(workdir) / METADATA_FILE
  if not path.exists():
    return None
  return json.loads(path.read_text())


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Pretrains and checkpoints; returns the steps done and the last loss."""
  # Fail fast on the pretext's names, before the data is built.
  pretext = check_config(config)
  num_channels = registry.get_dataset_spec(
    config.dataset, config.get("manual_dir")
  ).num_channels
  # Config, names, mesh and data: the supervised trainer's, with a model
  # that outputs one value per image channel.
  run = train.prepare(config, workdir, outputs=num_channels)
  config, spec, mesh = run.config, run.spec, run.mesh
  kind = config.ssl.get("loss", "mse")

  # --------------------------------------------------------------------------
  # Model and optimizer (the same key as the supervised trainer's).
  # --------------------------------------------------------------------------
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  sample = jnp.zeros(
    (1, *tuple(config.data.patch_size), spec.num_channels), jnp.float32
  )

  def init_state(key):
    variables = run.model.init(key, sample, train=False)
    return train.TrainState.create(
      apply_fn=run.model.apply,
      params=variables["params"],
      tx=run.tx,
      batch_stats=variables.get("batch_stats", {}),
    )

  state, state_sharding = train.init_replicated(init_state, init_rng, mesh)
  logging.info(
    "Pretraining %s (%d parameters) with %s.",
    config.model.name,
    sum(x.size for x in jax.tree.leaves(state.params)),
    pretext,
  )

  # --------------------------------------------------------------------------
  # Restore, in the order of train.py's docstring.
  # --------------------------------------------------------------------------
  manager = checkpointing.create_manager(
    run.workdir / "checkpoints",
    keep=config.get("keep_checkpoints", 3),
    track_best=False,
  )
  state, last_good = train.restore(run, manager, state)

  # --------------------------------------------------------------------------
  # Jitted step: the state donated, batches split over "data".
  # --------------------------------------------------------------------------
  train_step = train.jit_step(
    functools.partial(
      _train_step,
      pretext=pretext,
      kind=kind,
      schedule=run.schedule,
      augment=run.augment if run.augment_on == "device" else None,
    ),
    run,
    state_sharding,
  )

  # --------------------------------------------------------------------------
  # Training loop: the supervised trainer's, without validation.
  # --------------------------------------------------------------------------
  state, step = train.train_loop(
    run, state, train_step, step_rng, manager, None, last_good
  )
  write_metadata(run.workdir, config, step)
  run.writer.close()
  if step < config.num_train_steps:
    return {"stopped_at_step": step}
  return {"steps": step, "pretext": pretext.name}
