r"""Input pipeline throughput beside the train step's consumption rate.

  .venv/bin/python benchmarks/input_pipeline.py                # ISBI + Lesjak
  .venv/bin/python benchmarks/input_pipeline.py --configs=isbi --workers=0,2

For each config (its dataset, transforms, augmentation, batch size, model):

* the grain training pipeline's examples per second with 0 (in-process
  threads), 1 and 2 worker processes, after a warm-up, over `--batches`
  batches;
* the train step's consumption rate: `batch_size / median step time` of
  the config's jitted train step (after compilation), on the same machine;
* the ratio of the two. The pipeline keeps up if the ratio is at least 1;
  the target here is 2.

Data: ISBI 2012 and the Lesjak MS subset from `../shared/data` (or
`--isbi_dir` / `--lesjak_dir`), prepared into `--data_dir` on first use.
"""

from __future__ import annotations

import functools
import pathlib
import statistics
import sys
import time

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_CONFIGS = flags.DEFINE_list("configs", ["isbi", "lesjak"], "isbi, lesjak.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches per setting.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps.")
_DATA_DIR = flags.DEFINE_string(
  "data_dir", str(REPO / "data_cache" / "tensorflow_datasets"), "TFDS dir."
)
_ISBI_DIR = flags.DEFINE_string(
  "isbi_dir", str(REPO.parent / "shared/data/isbi2012_em_membrane"), ""
)
_LESJAK_DIR = flags.DEFINE_string(
  "lesjak_dir", str(REPO.parent / "shared/data/open_ms_data_lesjak2017"), ""
)


def _config(name: str):
  if name == "isbi":
    from configs import unet_isbi2012  # noqa: PLC0415

    config = unet_isbi2012.get_config()
    config.manual_dir = _ISBI_DIR.value
  elif name == "lesjak":
    from configs import unet3d_lesjak  # noqa: PLC0415

    config = unet3d_lesjak.get_config()
    config.manual_dir = _LESJAK_DIR.value
  else:
    raise app.UsageError(f"Unknown config {name!r}; valid: isbi, lesjak.")
  config.data_dir = _DATA_DIR.value
  return config


def pipeline_rate(config, workers: int, batches: int) -> float:
  """Examples per second of the training pipeline."""
  from medseg_jax.data import pipeline  # noqa: PLC0415

  config = config.copy_and_resolve_references()
  config.data.worker_count = workers
  dataset = pipeline.train_dataset(
    config, config.data_dir, local_batch_size=config.batch_size
  )
  iterator = iter(dataset)
  for _ in range(3):  # Warm-up: start workers, fill buffers.
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  elapsed = time.perf_counter() - start
  del iterator
  return batches * config.batch_size / elapsed


def step_rate(config, steps: int) -> tuple[float, float]:
  """(examples per second, median seconds per step) of the train step."""
  import jax  # noqa: PLC0415

  from medseg_jax import augment as augment_lib  # noqa: PLC0415
  from medseg_jax import losses  # noqa: PLC0415
  from medseg_jax import models  # noqa: PLC0415
  from medseg_jax import optimizers  # noqa: PLC0415
  from medseg_jax import train  # noqa: PLC0415
  from medseg_jax.data import pipeline  # noqa: PLC0415
  from medseg_jax.data import registry  # noqa: PLC0415

  spec = registry.get_dataset_spec(config.dataset, config.manual_dir)
  model = models.from_config(config, spec)
  tx, schedule = optimizers.create(config.optimizer, config.num_train_steps)
  batch = next(
    iter(
      pipeline.train_dataset(
        config, config.data_dir, local_batch_size=config.batch_size
      )
    )
  )
  variables = model.init(jax.random.key(0), batch["image"][:1], train=False)
  state = train.TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=tx,
    batch_stats=variables.get("batch_stats", {}),
  )
  # The config's augmentation runs in the step unless it is on the host.
  augment = None
  if config.augment and config.augment_on == "device":
    augment = augment_lib.build(config.augment, config.data.patch_size)
  step = jax.jit(
    functools.partial(
      train._train_step,  # noqa: SLF001
      loss_fn=losses.from_config(config.loss),
      schedule=schedule,
      augment=augment,
    ),
    donate_argnums=0,
  )
  rng = jax.random.key(1)
  state, _, _ = step(state, batch, rng)  # Compile.
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, _, finite = step(state, batch, rng)
    jax.block_until_ready(finite)
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  return config.batch_size / seconds, seconds


def main(argv):
  del argv
  from medseg_jax import xla_cpu  # noqa: PLC0415

  xla_cpu.configure_flags()  # Before any JAX computation.
  from medseg_jax.data import registry  # noqa: PLC0415

  rows = []
  for name in _CONFIGS.value:
    config = _config(name)
    registry.prepare(config.dataset, config.data_dir, config.manual_dir)
    consume, seconds = step_rate(config, _STEPS.value)
    print(
      f"{name}: train step {seconds * 1e3:.0f} ms for batch "
      f"{config.batch_size} of {tuple(config.data.patch_size)} -> "
      f"{consume:.2f} examples/s",
      flush=True,
    )
    for workers in map(int, _WORKERS.value):
      produce = pipeline_rate(config, workers, _BATCHES.value)
      rows.append((name, workers, produce, consume))
      print(
        f"{name}: {workers} workers -> {produce:.1f} examples/s "
        f"({produce / consume:.1f}x the train step)",
        flush=True,
      )
  print()
  print(
    "| config | patch | batch | workers | pipeline ex/s | step ex/s | ratio |"
  )
  print("|---|---|---|---|---|---|---|")
  for name, workers, produce, consume in rows:
    config = _config(name)
    print(
      f"| {name} | {'x'.join(map(str, config.data.patch_size))} | "
      f"{config.batch_size} | {workers} | {produce:.1f} | {consume:.2f} | "
      f"{produce / consume:.1f}x |"
    )


if __name__ == "__main__":
  app.run(main)
