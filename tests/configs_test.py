"""Every config under configs/ and every benchmark suite entry resolves.

The files are found by walking configs/ recursively: each module defines
``get_config`` (a config) or ``get_suite`` (a benchmark suite, see
``medseg_jax.benchmark.load_suite``). Each config, in its documented
variants, and each suite entry (its config string with its arguments,
seed and overrides, as ``python -m medseg_jax.benchmark`` runs it) is its
own test: the names resolve, the model builds and maps a patch of the
config's size to logits of that size (``jax.eval_shape``: traced, not
run), and the augmentation list builds.
"""

import dataclasses
import importlib
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from medseg_jax import augment
from medseg_jax import baselines
from medseg_jax import benchmark
from medseg_jax import losses
from medseg_jax import models
from medseg_jax import optimizers
from medseg_jax.data import registry
from medseg_jax.data import transforms

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
NOT_CONFIGS = ("__init__.py", "common.py")


def _config_files() -> list[str]:
  """Paths relative to the repository, e.g. ``configs/benchmarks/x.py``."""
  return sorted(
    str(p.relative_to(REPO))
    for p in CONFIG_DIR.rglob("*.py")
    if p.name not in NOT_CONFIGS
  )


def _module(path: str) -> Any:
  return importlib.import_module(path.removesuffix(".py").replace("/", "."))


def _suites() -> list[str]:
  return [p for p in _config_files() if hasattr(_module(p), "get_suite")]


def _config_cases() -> list[Any]:
  """``path`` or ``path:arg``: each config in its documented variants."""
  cases = []
  for path in _config_files():
    module = _module(path)
    if not hasattr(module, "get_config"):
      continue
    cases += [path, f"{path}:runlocal"]
    if path == "configs/zoo.py":
      for model, (_, dims) in sorted(module.MODELS.items()):
        for data, make in sorted(module.DATA.items()):
          if len(make().data.patch_size) in dims:
            spec = f"{path}:model={model},data={data}"
            # Every preset on every dataset is make test's job; test-fast
            # keeps the default and runlocal variants above.
            cases.append(pytest.param(spec, marks=pytest.mark.slow, id=spec))
    if path == "configs/unet_isbi2012.py":
      cases += [f"{path}:augment={name}" for name in sorted(module.AUGMENT)]
  return cases


def _suite_cases() -> list[tuple[str, str, dict[str, Any]]]:
  """``(suite path, entry kind, entry)`` for every experiment and baseline."""
  cases = []
  for path in _suites():
    suite = benchmark.load_suite(str(REPO / path))
    for kind in ("experiments", "baselines"):
      cases += [(path, kind, dict(entry)) for entry in suite[kind]]
  return cases


def test_every_file_is_a_config_or_a_suite():
  files = _config_files()
  assert "configs/unet_synthetic.py" in files
  assert "configs/benchmarks/zoo_synthetic2d.py" in files
  for path in files:
    module = _module(path)
    assert hasattr(module, "get_config") != hasattr(module, "get_suite"), path
    assert "--config=configs/" in module.__doc__ or (
      "--suite=configs/" in module.__doc__
    ), f"{path}: the docstring needs its command"


def _resolve(spec: str, tmp_path: pathlib.Path) -> ml_collections.ConfigDict:
  """``configs/x.py:arg`` -> the config, as the trainer and suites load it."""
  path, _, arg = spec.partition(":")
  if path == "configs/unet_folder.py":  # Needs a data folder.
    from medseg_jax.data.from_folder import dummy_data  # noqa: PLC0415

    folder = dummy_data.make_dummy_data(tmp_path, fmt="png")
    arg = ",".join(filter(None, [f"folder={folder}", arg]))
  if path == "configs/ssl_isbi2012.py" and "runlocal" not in arg:
    # Needs a label-free folder (medseg_jax/data/from_folder/unlabelled.py).
    from medseg_jax.data.from_folder import dummy_data  # noqa: PLC0415
    from medseg_jax.data.from_folder import unlabelled  # noqa: PLC0415

    raw = dummy_data.make_dummy_data(tmp_path / "raw", fmt="png")
    folder = tmp_path / "unlabelled"
    unlabelled.write_folder(
      folder,
      [raw / "images"],
      name="unlabelled",
      spatial_dims=2,
      channel_names=("R", "G", "B"),
    )
    arg = ",".join(filter(None, [f"folder={folder}", arg]))
  if path == "configs/auto.py":  # Needs a folder with a plan.
    from medseg_jax import plan  # noqa: PLC0415
    from medseg_jax.data.from_folder import dummy_data  # noqa: PLC0415

    folder = dummy_data.make_dummy_data(tmp_path, fmt="png")
    plan.write_plan(
      folder / plan.DEFAULT_OUTPUT,
      plan.fingerprint_folder(folder),
      memory_budget_bytes=2**20,
      base_features=4,
      # Resolving the config needs a plan, not a measured one.
      measure_fn=lambda config, spec: dict(total=0),
    )
    arg = ",".join(filter(None, [f"folder={folder}", arg]))
  return _module(path).get_config(arg or None)


def _override(config: ml_collections.ConfigDict, key: str, value: Any):
  """``--config.a.b=value``: the field must exist (as for the flag)."""
  *parents, leaf = key.split(".")
  target = config
  for parent in parents:
    target = target[parent]
  assert leaf in target, f"override of unknown field {key!r}"
  target[leaf] = value


def _model_key(config: ml_collections.ConfigDict) -> str:
  fields = {
    "model": config.model.to_dict(),
    "mesh": dict(config.get("mesh", None) or {}),
    "dataset": config.dataset,
    "trainer": config.get("trainer", "supervised"),
    "patch": list(config.data.patch_size),
  }
  return json.dumps(fields, sort_keys=True, default=str)


# _model_key(config) -> (logits shape, dataset spec): configs that differ
# only in data, steps or seed share one trace.
_TRACED = {}


def _logits_shape(config: ml_collections.ConfigDict):
  """The model's logits shape on one patch of the config's size."""
  key = _model_key(config)
  if key not in _TRACED:
    _TRACED[key] = _trace(config)
  return _TRACED[key]


def _trace(config: ml_collections.ConfigDict):
  spec = registry.get_dataset_spec(config.dataset, config.manual_dir)
  if config.get("trainer") == "ssl":  # A reconstruction head (train_ssl).
    spec = dataclasses.replace(spec, num_classes=spec.num_channels)
  model = models.from_config(config, spec)
  x = jax.ShapeDtypeStruct(
    (1, *config.data.patch_size, spec.num_channels), jnp.float32
  )

  def logits(x):
    variables = model.init(jax.random.key(0), x, train=False)
    return model.apply(variables, x, train=False)

  return jax.eval_shape(logits, x).shape, spec


def _check(config: ml_collections.ConfigDict) -> None:
  assert config.model.name in models.MODELS
  assert config.optimizer.name in optimizers.OPTIMIZERS
  assert config.optimizer.schedule in optimizers.SCHEDULES
  shape, spec = _logits_shape(config)
  # Names, options and values of the loss (or of each of its terms); a
  # self-supervised run reconstructs the image with its own loss.
  if config.get("trainer") != "ssl":
    losses.from_config(
      config.loss, num_classes=spec.num_classes, spatial_dims=spec.spatial_dims
    )
  patch = tuple(config.data.patch_size)
  assert len(patch) == spec.spatial_dims
  assert shape == (1, *patch, spec.num_classes)
  augment.build(config.get("augment", None) or [], spatial_shape=patch)
  transforms.build(
    [
      {"size": patch, **s} if s["op"] == "random_crop_or_pad" else s
      for s in config.data.train_transforms
    ]
  )


@pytest.mark.parametrize("spec", _config_cases())
def test_config_resolves_and_builds(spec, tmp_path):
  _check(_resolve(spec, tmp_path))


SUITE_CASES = _suite_cases()


@pytest.mark.parametrize(
  "suite, kind, entry",
  SUITE_CASES,
  ids=[f"{p}:{e['name']}" for p, _, e in SUITE_CASES],
)
def test_suite_entry_resolves_and_builds(suite, kind, entry, tmp_path):
  del suite  # In the test id.
  config = _resolve(entry["config"], tmp_path)
  if kind == "baselines":
    method = baselines.get_baseline(
      entry["method"],
      num_classes=registry.get_dataset_spec(
        config.dataset, config.manual_dir
      ).num_classes,
      **entry.get("kwargs", {}),
    )
    assert method is not None
  overrides = dict(entry.get("overrides", {}))
  if kind == "experiments":  # As benchmark.run_experiment passes them.
    overrides = {"seed": entry.get("seeds", (0,))[0], **overrides}
  for key, value in overrides.items():
    _override(config, key, value)
  _check(config)


def test_unknown_config_argument_lists_valid_ones():
  from configs import unet_synthetic

  with pytest.raises(ValueError, match="runlocal"):
    unet_synthetic.get_config("fastest")


def test_isbi_slices_and_augment_arguments():
  from configs import unet_isbi2012

  config = unet_isbi2012.get_config("slices=6,augment=elastic")
  assert config.train_split == "train[:6]"
  # The named list comes after the base config's flips.
  assert [s["op"] for s in config.augment] == ["flip", "elastic"]
  augment.build(config.augment, spatial_shape=config.data.patch_size)
  assert [s["op"] for s in unet_isbi2012.get_config("slices=6").augment] == [
    "flip"
  ]
  with pytest.raises(ValueError, match="elastic"):
    unet_isbi2012.get_config("augment=swirl")
  with pytest.raises(ValueError, match="percent"):
    unet_isbi2012.get_config("slices=6,fold=1")
