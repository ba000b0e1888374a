"""Command line entry point: flags only; the work is in the trainer.

  python -m medseg_jax.main --config=configs/unet_synthetic.py \
      --workdir=/tmp/run [--config.num_train_steps=100 ...]

``config.trainer`` picks the trainer (`TRAINERS`): ``"supervised"`` (the
default, train.py), ``"adversarial"`` (train_adversarial.py, e.g.
``configs/segan_synthetic.py``) or ``"ssl"`` (train_ssl.py, self-supervised
pretraining, e.g. ``configs/ssl_isbi2012.py``).

The console shows a progress bar, the validation scores and the final
table; the full log, third-party INFO included, is ``<workdir>/log.txt``.
``--verbosity=1`` (absl's ``-v 1``) shows every library's INFO on the
console too, ``--verbosity=2`` DEBUG as well.

Several processes (one per host, or per GPU): every process runs the same
command with the same --workdir (a shared file system) and joins through
``jax.distributed.initialize``:

  # explicit: process i of N, the coordinator is process 0's host:port
  python -m medseg_jax.main ... --coordinator_address=host0:12345 \
      --num_processes=N --process_id=i

  # from the cluster environment (Cloud TPU pod slices, SLURM, Open MPI,
  # Kubernetes JobSet...): JAX's own cluster detection fills in all three
  python -m medseg_jax.main ... --distributed
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from medseg_jax import xla_cpu  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Config file, optionally with an argument: path.py:arg."
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.DEFINE_bool(
  "distributed",
  False,
  "Call jax.distributed.initialize() even without --coordinator_address: "
  "the coordinator and process ids then come from the cluster environment "
  "(TPU pod slice, SLURM, Open MPI, ...).",
)
flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0's coordinator service; implies --distributed.",
)
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "This process's id, 0..N-1.")
flags.DEFINE_list(
  "local_device_ids",
  None,
  "Devices of this host that this process uses (e.g. one GPU per process: "
  "--local_device_ids=0); default all.",
)
flags.mark_flags_as_required(["config", "workdir"])

# config.trainer -> the module whose train_and_evaluate(config, workdir) runs.
TRAINERS = {
  "supervised": "medseg_jax.train",
  "adversarial": "medseg_jax.train_adversarial",
  "ssl": "medseg_jax.train_ssl",
}


def trainer_module(config) -> str:
  """The module of ``config.trainer`` (default ``"supervised"``)."""
  name = config.get("trainer", "supervised")
  if name not in TRAINERS:
    raise ValueError(
      f"Unknown config.trainer {name!r}; valid: {sorted(TRAINERS)}."
    )
  return TRAINERS[name]


def initialize_distributed() -> bool:
  """Joins the processes of a multi-process run, if the flags ask for one.

  Returns whether ``jax.distributed.initialize`` was called. Must run
  before anything touches a JAX device.
  """
  if not (FLAGS.distributed or FLAGS.coordinator_address):
    return False
  import jax  # pylint: disable=g-import-not-at-top

  local_ids = FLAGS.local_device_ids
  jax.distributed.initialize(
    coordinator_address=FLAGS.coordinator_address,
    num_processes=FLAGS.num_processes,
    process_id=FLAGS.process_id,
    local_device_ids=[int(i) for i in local_ids] if local_ids else None,
  )
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  xla_cpu.configure_for(FLAGS.config)  # Before any JAX computation.
  module = trainer_module(FLAGS.config)  # A bad name fails before JAX starts.
  initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top

  from medseg_jax import console  # pylint: disable=g-import-not-at-top

  # Before the imports below: they load TensorFlow, which console quiets.
  console.setup(FLAGS.workdir)
  import importlib  # pylint: disable=g-import-not-at-top

  trainer = importlib.import_module(module)

  logging.info(
    "JAX process %d of %d; devices: %s",
    jax.process_index(),
    jax.process_count(),
    jax.devices(),
  )
  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
