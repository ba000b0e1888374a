"""Adversarial training: a segmentor and a critic, trained in alternation.

``train_and_evaluate(config, workdir)`` is the supervised trainer's job
(`train.py`) with a second network:

  mesh -> data -> segmentor, critic and their optimizers -> restore
  -> jitted step (critic steps, then a segmentor step) -> loop
  -> final evaluation of the held-out split with the best checkpoint.

The config, mesh, data iterator, restore order, training loop, checkpoints,
validation and final report are `train.py`'s own functions; only the state
and the step differ. Chosen with ``config.trainer = "adversarial"`` (see
`main.py`), options in ``config.adversarial``:

* ``critic``: ``name`` (``"segan"`` or ``"patchgan"``, see
  `models.critics`) and that critic's options (``features`` or ``ndf`` and
  ``num_layers``, ``norm``, ``spectral_norm``);
* ``loss``: for a PatchGAN, one of `losses.adversarial.GAN_LOSSES`
  (SegAN always uses its multi-scale L1 distance);
* ``weight``: the adversarial term's weight in the segmentor's loss
  (``supervised + weight * adversarial``; 0 trains the critic alongside a
  purely supervised segmentor), and ``start_step``: the step from which the
  term counts;
* ``critic_steps``: critic updates per segmentor update, each on the same
  batch against the current segmentor's prediction;
* ``critic_clip``: after each critic update its weights are clipped to
  ``[-c, c]`` (SegAN's recipe, which keeps its maximised L1 bounded); 0
  disables;
* ``optimizer``: the critic's, with the fields of ``config.optimizer``; its
  schedule runs over ``num_train_steps * critic_steps`` critic updates.

The critic sees the image with a label map of one channel per foreground
class: the one-hot ground truth (real) or the softmax prediction (fake),
both zeroed where ``batch["mask"]`` is zero.

One checkpoint holds both networks: the state is the segmentor's
``TrainState`` (params, optimizer state, batch statistics, step) with a
``critic`` field holding the critic's own ``TrainState``, so they resume
together, with the data iterator's position, and every reader of the run
(evaluate, predict) finds the segmentor's ``params`` where the supervised
trainer puts them.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import metrics as clu_metrics
from flax import struct

from medseg_jax import checkpointing
from medseg_jax import optimizers
from medseg_jax import train
from medseg_jax.data import registry
from medseg_jax.losses import adversarial as adversarial_losses
from medseg_jax.models import critics


class AdversarialState(train.TrainState):
  """The segmentor's train state with the critic's beside it."""

  critic: train.TrainState | None = None


@struct.dataclass
class AdversarialMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  supervised_loss: clu_metrics.Average.from_output("supervised_loss")
  adversarial_loss: clu_metrics.Average.from_output("adversarial_loss")
  critic_loss: clu_metrics.Average.from_output("critic_loss")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  critic_grad_norm: clu_metrics.Average.from_output("critic_grad_norm")
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast on a bad ``config.adversarial``, naming the valid choices."""
  adv = config.get("adversarial")
  if adv is None:
    raise ValueError(
      "config.trainer='adversarial' needs config.adversarial (see "
      "configs/common.py adversarial_config)."
    )
  critics.check_name(adv.critic.get("name", ""))
  if adv.critic.name == "patchgan":
    adversarial_losses.check_kind(adv.get("loss", "least_squares"))
  if int(adv.critic_steps) < 1:
    raise ValueError(
      f"config.adversarial.critic_steps must be >= 1, got {adv.critic_steps}."
    )


def _label_maps(probs_or_onehot: jax.Array, mask: jax.Array) -> jax.Array:
  """Foreground channels, zero where the mask is zero: ``f32[B, *S, K-1]``."""
  return probs_or_onehot[..., 1:] * mask[..., None].astype(jnp.float32)


def _critic_apply(critic, params, image, real, fake, *, update_stats):
  """The critic on real and fake label maps as one batch (so the spectral
  norm's power iteration sees both); returns ``(real_out, fake_out),
  updated batch_stats``."""
  variables = {"params": params}
  if critic.batch_stats:
    variables["batch_stats"] = critic.batch_stats
  both_images = jnp.concatenate([image, image], axis=0)
  both_maps = jnp.concatenate([real, fake], axis=0)
  out, updates = critic.apply_fn(
    variables,
    both_images,
    both_maps,
    update_stats=update_stats,
    mutable=["batch_stats"],
  )
  half = image.shape[0]
  split = jax.tree.map(lambda x: (x[:half], x[half:]), out)
  if isinstance(out, list):  # SegAN: a list of feature levels.
    real_out = [pair[0] for pair in split]
    fake_out = [pair[1] for pair in split]
  else:
    real_out, fake_out = split
  return (real_out, fake_out), updates.get("batch_stats", {})


def _train_step(
  state: AdversarialState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  loss_fn,
  schedule,
  critic_name: str,
  gan_loss: str,
  weight: float,
  start_step: int,
  critic_steps: int,
  critic_clip: float,
  augment=None,
) -> tuple[AdversarialState, AdversarialMetrics, jax.Array]:
  """``critic_steps`` critic updates, then one segmentor update; pure."""
  rng = jax.random.fold_in(rng, state.step)
  if augment is not None:
    rng, augment_rng = jax.random.split(rng)
    batch = augment(augment_rng, batch)
  image, mask = batch["image"], batch["mask"]

  def critic_terms(real_out, fake_out):
    """(critic loss, segmentor's adversarial term), batch means."""
    if critic_name == "segan":
      distance = jnp.mean(adversarial_losses.multiscale_l1(real_out, fake_out))
      return -distance, distance
    return (
      jnp.mean(adversarial_losses.critic_loss(real_out, fake_out, gan_loss)),
      jnp.mean(adversarial_losses.segmentor_loss(fake_out, gan_loss)),
    )

  # The current segmentor's prediction, as the critic steps see it (train
  # mode and the same dropout key as the segmentor step below).
  _, _, logits = train.supervised_loss(state, state.params, batch, rng, loss_fn)
  num_classes = logits.shape[-1]
  real = _label_maps(jax.nn.one_hot(batch["label"], num_classes), mask)
  fake = jax.lax.stop_gradient(_label_maps(jax.nn.softmax(logits), mask))

  # --------------------------------------------------------------------------
  # Critic: minimise its loss against the fixed segmentor.
  # --------------------------------------------------------------------------
  def critic_objective(params, critic):
    outs, stats = _critic_apply(
      critic, params, image, real, fake, update_stats=True
    )
    return critic_terms(*outs)[0], stats

  critic = state.critic
  critic_loss = critic_grad_norm = jnp.zeros((), jnp.float32)
  for _ in range(critic_steps):
    (critic_loss, stats), grads = jax.value_and_grad(
      critic_objective, has_aux=True
    )(critic.params, critic)
    critic_grad_norm = optax.tree.norm(grads)
    critic = critic.apply_gradients(grads=grads)
    if critic.batch_stats:
      critic = critic.replace(batch_stats=stats)
    if critic_clip:
      critic = critic.replace(
        params=jax.tree.map(
          lambda p: jnp.clip(p, -critic_clip, critic_clip), critic.params
        )
      )

  # --------------------------------------------------------------------------
  # Segmentor: supervised loss plus the weighted adversarial term, against
  # the updated critic (whose parameters are constants here).
  # --------------------------------------------------------------------------
  on = (state.step >= start_step).astype(jnp.float32)

  def objective(params):
    supervised, updates, logits = train.supervised_loss(
      state, params, batch, rng, loss_fn
    )
    fake = _label_maps(jax.nn.softmax(logits), mask)
    outs, _ = _critic_apply(
      critic, critic.params, image, real, fake, update_stats=False
    )
    adversarial = critic_terms(*outs)[1]
    total = supervised + on * weight * adversarial
    return total, (updates, supervised, adversarial)

  (loss, (updates, supervised, adversarial)), grads = jax.value_and_grad(
    objective, has_aux=True
  )(state.params)
  new_state = state.apply_gradients(grads=grads)
  if state.batch_stats:
    new_state = new_state.replace(batch_stats=updates["batch_stats"])
  new_state = new_state.replace(critic=critic)
  grad_norm = optax.tree.norm(grads)
  # Both networks' losses, gradients and new parameters must be finite:
  # a checkpoint must never hold NaN weights of either.
  finite = (
    jnp.isfinite(loss)
    & jnp.isfinite(grad_norm)
    & jnp.isfinite(optax.tree.norm(new_state.params))
    & jnp.isfinite(critic_loss)
    & jnp.isfinite(critic_grad_norm)
    & jnp.isfinite(optax.tree.norm(critic.params))
  )
  metrics = AdversarialMetrics.single_from_model_output(
    loss=loss,
    supervised_loss=supervised,
    adversarial_loss=adversarial,
    critic_loss=critic_loss,
    grad_norm=grad_norm,
    critic_grad_norm=critic_grad_norm,
    learning_rate=schedule(state.step),
  )
  return new_state, metrics, finite


def init_state(
  key: jax.Array,
  *,
  model,
  critic,
  tx: optax.GradientTransformation,
  critic_tx: optax.GradientTransformation,
  patch: tuple[int, ...],
  num_channels: int,
  num_classes: int,
) -> AdversarialState:
  """Both networks' initial weights and optimizer states.

  The segmentor's key is the supervised trainer's, so that a run and its
  supervised twin (same seed) start from the same segmentor weights.
  """
  sample = jnp.zeros((1, *patch, num_channels), jnp.float32)
  sample_maps = jnp.zeros((1, *patch, num_classes - 1), jnp.float32)
  variables = model.init(key, sample, train=False)
  critic_variables = critic.init(
    jax.random.fold_in(key, 1), sample, sample_maps
  )
  return AdversarialState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=tx,
    batch_stats=variables.get("batch_stats", {}),
    critic=train.TrainState.create(
      apply_fn=critic.apply,
      params=critic_variables["params"],
      tx=critic_tx,
      batch_stats=critic_variables.get("batch_stats", {}),
    ),
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains segmentor and critic, checkpoints and evaluates the segmentor;
  returns the test-split summary."""
  # Fail fast on the critic's names and options, before the data is built.
  check_config(config)
  spatial_dims = registry.get_dataset_spec(
    config.dataset, config.get("manual_dir")
  ).spatial_dims
  critic = critics.from_config(config.adversarial.critic, spatial_dims)
  # Config, names, mesh and data: the supervised trainer's.
  run = train.prepare(config, workdir)
  config, spec, mesh = run.config, run.spec, run.mesh
  adv = config.adversarial
  critic_steps = int(adv.critic_steps)
  critic_tx, _ = optimizers.create(
    adv.optimizer, config.num_train_steps * critic_steps
  )

  # --------------------------------------------------------------------------
  # Segmentor, critic and their optimizers, in one state.
  # --------------------------------------------------------------------------
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)

  init_fn = functools.partial(
    init_state,
    model=run.model,
    critic=critic,
    tx=run.tx,
    critic_tx=critic_tx,
    patch=tuple(config.data.patch_size),
    num_channels=spec.num_channels,
    num_classes=spec.num_classes,
  )
  state, state_sharding = train.init_replicated(init_fn, init_rng, mesh)
  logging.info(
    "Segmentor %s: %d parameters; critic %s: %d parameters.",
    config.model.name,
    sum(x.size for x in jax.tree.leaves(state.params)),
    adv.critic.name,
    sum(x.size for x in jax.tree.leaves(state.critic.params)),
  )

  # --------------------------------------------------------------------------
  # Restore, in the order of train.py's docstring (init_from sets the
  # segmentor's weights; the critic starts from scratch).
  # --------------------------------------------------------------------------
  manager = checkpointing.create_manager(
    run.workdir / "checkpoints", keep=config.get("keep_checkpoints", 3)
  )
  state, last_good = train.restore(run, manager, state)

  # --------------------------------------------------------------------------
  # Jitted step: both networks' states donated, batches split over "data".
  # --------------------------------------------------------------------------
  train_step = train.jit_step(
    functools.partial(
      _train_step,
      loss_fn=run.loss_fn,
      schedule=run.schedule,
      critic_name=adv.critic.name,
      gan_loss=adv.get("loss", "least_squares"),
      weight=float(adv.weight),
      start_step=int(adv.get("start_step", 0)),
      critic_steps=critic_steps,
      critic_clip=float(adv.get("critic_clip", 0.0)),
      augment=run.augment if run.augment_on == "device" else None,
    ),
    run,
    state_sharding,
  )
  validate = train.make_validate(run)

  # --------------------------------------------------------------------------
  # Training loop and final evaluation: the supervised trainer's.
  # --------------------------------------------------------------------------
  state, step = train.train_loop(
    run, state, train_step, step_rng, manager, validate, last_good
  )
  if step < config.num_train_steps:
    return {"stopped_at_step": step}
  return train.final_report(run, state, manager, validate, step)
