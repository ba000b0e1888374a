r"""How much a pretraining run learned: its pretext loss against two baselines.

  python benchmarks/ssl_pretext_baselines.py \
      --workdir=workdirs/ssl_isbi2012_sweep/pretrain --batches=8

On random training patches of the run's own data (its config), corrupted
by its own pretext task with fresh keys: the reconstruction loss of the
trained network, of predicting zero (the mean of a z-scored patch) and of
returning the corrupted input unchanged (identity). A network that has not
beaten "zero" has learned little more than the mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--batches", type=int, default=8)
  parser.add_argument("--data_dir", default="")
  args = parser.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from medseg_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from medseg_jax import models  # pylint: disable=g-import-not-at-top
  from medseg_jax import pretext  # pylint: disable=g-import-not-at-top
  from medseg_jax import run_config  # pylint: disable=g-import-not-at-top
  from medseg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from medseg_jax.data import registry  # pylint: disable=g-import-not-at-top

  config = run_config.load(args.workdir)
  if args.data_dir:
    config.data_dir = args.data_dir
  config.seed = config.seed + 1000  # Other patches than training drew.
  spec = registry.get_dataset_spec(config.dataset, config.get("manual_dir"))
  model = models.from_config(
    config, dataclasses.replace(spec, num_classes=spec.num_channels)
  )
  params, stats = checkpointing.load_params(args.workdir)
  variables = {"params": params}
  if stats:
    variables["batch_stats"] = stats
  task = pretext.from_config(config.ssl)
  kind = config.ssl.get("loss", "mse")
  batches = iter(
    pipeline.train_dataset(
      config, config.data_dir, local_batch_size=config.batch_size
    )
  )

  @jax.jit
  def losses(key, images, mask):
    inputs = task(key, images)
    weight = inputs["weight"] * mask
    prediction = model.apply(variables, inputs["image"], train=False)

    def score(p):
      return jnp.mean(
        pretext.reconstruction_loss(p, inputs["target"], weight, kind)
      )

    return (
      score(prediction),
      score(jnp.zeros_like(images)),
      score(inputs["image"]),
    )

  totals = np.zeros(3)
  for index in range(args.batches):
    batch = next(batches)
    totals += np.asarray(
      losses(jax.random.key(index), batch["image"], batch["mask"])
    )
  network, zero, identity = totals / args.batches
  print(
    f"{task.name} ({kind}) over {args.batches} batches of "
    f"{config.batch_size}: network {network:.4f}, zero {zero:.4f}, "
    f"identity {identity:.4f}"
  )


if __name__ == "__main__":
  main()
