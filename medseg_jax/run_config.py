"""A run's resolved config, saved in its work dir and read back by its readers.

The trainer writes `WORKDIR/config.json` (the whole resolved config) when a
run starts, so every program that reads a run needs only `--workdir`:

  python -m medseg_jax.evaluate --workdir=workdirs/demo
  python -m medseg_jax.evaluate --workdir=workdirs/demo \
      --config.eval.sliding_window=True    # an override of the saved config
  python -m medseg_jax.evaluate --workdir=workdirs/demo \
      --config=configs/unet_synthetic.py   # a whole config, checked

A config given on top of a run may change anything except what fixes the
weights: the dataset and the model's architecture fields (`IDENTITY`).
Changing those is an error that names each differing field, since the
checkpoint could not be loaded into the other model, or would be loaded
into a model of another dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
from etils import epath

CONFIG_FILE = "config.json"
# Fields that fix the weights: `model.*` except these switches, and
# `dataset` (its classes and channels shape the first and last layers).
MODEL_SWITCHES = ("dtype", "remat")
IDENTITY = ("dataset", "model")


def path(workdir: str | os.PathLike) -> epath.Path:
  return epath.Path(os.path.abspath(os.path.expanduser(workdir))) / CONFIG_FILE


def _tuples(value: Any) -> Any:
  """JSON lists of scalars back to tuples, as configs write them."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    items = [_tuples(v) for v in value]
    if any(isinstance(v, dict) for v in items):
      return items
    return tuple(items)
  return value


def to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True) + "\n"


def save(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
  """Writes `workdir/config.json` atomically (a temporary name, renamed)."""
  target = path(workdir)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / (target.name + ".tmp")
  tmp.write_text(to_json(config))
  tmp.replace(target)


def load(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a run saved.

  Raises:
    FileNotFoundError: if the work dir has no `config.json`.
    ValueError: if it is not valid JSON (the message names the file).
  """
  source = path(workdir)
  if not source.exists():
    raise FileNotFoundError(
      f"{source} does not exist: {workdir} is not a run's work dir, or the "
      "run predates config.json; pass the run's config with "
      "--config=configs/NAME.py."
    )
  try:
    data = json.loads(source.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{source} is not valid JSON: {e}") from e
  return ml_collections.ConfigDict(_tuples(data))


def _plain(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return _tuples(json.loads(json.dumps(value, default=str)))


def differences(
  run: ml_collections.ConfigDict, given: ml_collections.ConfigDict
) -> list[str]:
  """`"field: run value != given value"` for each identity field that
  differs (see `IDENTITY`), in sorted order."""
  out = []
  for key in IDENTITY:
    a, b = _plain(run.get(key)), _plain(given.get(key))
    if key == "model":
      a = {k: v for k, v in (a or {}).items() if k not in MODEL_SWITCHES}
      b = {k: v for k, v in (b or {}).items() if k not in MODEL_SWITCHES}
      for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
          out.append(f"model.{name}: run {a.get(name)!r} != {b.get(name)!r}")
    elif a != b:
      out.append(f"{key}: run {a!r} != {b!r}")
  return out


def check_compatible(
  run: ml_collections.ConfigDict,
  given: ml_collections.ConfigDict,
  where: str,
) -> None:
  """Raises a ValueError naming every identity field that differs."""
  diff = differences(run, given)
  if diff:
    raise ValueError(
      f"The config given does not match the run in {where} (its "
      f"{CONFIG_FILE}), so its checkpoints do not fit: "
      + "; ".join(diff)
      + ". Change only other fields (eval, data_dir, batch sizes...), or "
      "use another --workdir."
    )


def resolve(
  workdir: str | os.PathLike,
  config: ml_collections.ConfigDict | None = None,
) -> ml_collections.ConfigDict:
  """The config to read a run with: `config` if given (checked against the
  saved one when there is one), else the saved one."""
  if config is None:
    return load(workdir)
  if path(workdir).exists():
    check_compatible(load(workdir), config, str(workdir))
  return config


def flattened(config: ml_collections.ConfigDict) -> dict[str, str]:
  """`{"model.features": "(16, 32)", ...}`: every leaf, for hparams."""
  out = {}

  def walk(prefix: str, value: Any) -> None:
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      for key in sorted(value.keys()):
        walk(f"{prefix}.{key}" if prefix else key, value[key])
    else:
      out[prefix] = str(value)

  walk("", config)
  return out


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def define_config_flag(argv: Sequence[str], name: str = "config") -> None:
  """Defines `--config` for a program that reads a run (`--workdir`).

  With `--config=FILE[:arg]` on the command line it is a config file flag,
  as for training. Otherwise its default is the run's saved config, so
  `--config.eval.sliding_window=True` overrides one field of it. Call
  before `absl.app.run`, with `sys.argv`.
  """
  from ml_collections import config_flags  # noqa: PLC0415

  workdir = _flag_value(argv, "workdir")
  given_file = _flag_value(argv, name) is not None
  if given_file or workdir is None or not path(workdir).exists():
    config_flags.DEFINE_config_file(
      name,
      None,
      "A config file (path.py[:arg]); default: the run's config.json.",
    )
  else:
    config_flags.DEFINE_config_dict(
      name,
      load(workdir),
      "The run's config.json; override fields with --config.FIELD=VALUE.",
    )
