"""Command line entry point: flags only; the work is in train.py.

  python -m medseg_jax.main --config=configs/unet_synthetic.py \
      --workdir=/tmp/run [--config.num_train_steps=100 ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Config file, optionally with an argument: path.py:arg."
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.DEFINE_bool(
  "distributed",
  False,
  "Call jax.distributed.initialize() (multi-host; the coordinator address "
  "and process ids come from the cluster environment).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top

  if FLAGS.distributed:
    jax.distributed.initialize()
  from medseg_jax import train  # pylint: disable=g-import-not-at-top

  logging.info(
    "JAX process %d of %d; devices: %s",
    jax.process_index(),
    jax.process_count(),
    jax.devices(),
  )
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
