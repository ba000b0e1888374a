"""Tests for the dataset registry."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from medseg_jax.data import checks
from medseg_jax.data import lesjak_ms
from medseg_jax.data import registry
from medseg_jax.data.synthetic_phantoms import synthetic_phantoms as sp
from tests import polling

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SMALL_SIZES = {"train": 3, "validation": 1, "test": 2}


@pytest.fixture(autouse=True)
def small_splits(monkeypatch):
  tfds.disable_progress_bar()
  for name in ("2d", "3d"):
    config = sp.SyntheticPhantoms.builder_configs[name]
    monkeypatch.setattr(config, "split_sizes", SMALL_SIZES)


def _write_fake_isbi(train_dir):
  """30 random 512 x 512 slices in the PNG layout."""
  rng = np.random.default_rng(0)
  for kind in ("image", "label"):
    (train_dir / kind).mkdir(parents=True)
  for index in range(30):
    image = rng.integers(0, 256, (64, 64), np.uint8).repeat(8, 0).repeat(8, 1)
    label = np.where(image < 50, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(train_dir / "image" / f"{index}.png")
    Image.fromarray(label).save(train_dir / "label" / f"{index}.png")


def test_registered_names():
  assert {
    "synthetic_phantoms/2d",
    "synthetic_phantoms/3d",
    "isbi2012_em",
    "lesjak_ms",
  } <= set(registry.DATASETS)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError) as info:
    registry.get_dataset_spec("nope")
  message = str(info.value)
  assert "'nope'" in message
  for name in registry.DATASETS:
    assert name in message
  with pytest.raises(ValueError, match="isbi2012_em"):
    registry.prepare("nope", "/tmp/unused")
  with pytest.raises(ValueError, match="isbi2012_em"):
    registry.data_source("nope", "train", "/tmp/unused")


def test_spec_is_frozen():
  spec = registry.get_dataset_spec("isbi2012_em")
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.num_classes = 3  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(registry.DATASETS))
def test_spec_matches_builder(name, tmp_path):
  spec = registry.get_dataset_spec(name)
  builder = tfds.builder(spec.tfds_name, data_dir=tmp_path)
  features = builder.info.features
  assert {"image", "label", "spacing", "case_id"} <= set(features)
  image_shape = features["image"].shape
  assert len(image_shape) == spec.spatial_dims + 1
  assert image_shape[-1] == spec.num_channels
  assert features["image"].np_dtype == np.float32
  assert features["label"].shape == image_shape[:-1]
  assert features["label"].np_dtype == np.uint8
  assert features["spacing"].shape == (spec.spatial_dims,)
  assert spec.num_classes == len(spec.class_names)
  assert tuple(builder.info.metadata["class_names"]) == spec.class_names
  if spec.needs_manual_dir:
    assert builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert builder.info.file_format.value == "array_record"


def test_prepare_and_read_synthetic(tmp_path, monkeypatch):
  builder = registry.prepare("synthetic_phantoms/2d", tmp_path)
  assert builder.is_prepared()
  assert builder.info.splits["test"].num_examples == SMALL_SIZES["test"]

  # Preparing again is a no-op: nothing is generated.
  def fail(*args, **kwargs):
    raise AssertionError("should not build again")

  monkeypatch.setattr(sp.SyntheticPhantoms, "_generate_examples", fail)
  assert registry.prepare("synthetic_phantoms/2d", str(tmp_path)).is_prepared()

  source = registry.data_source("synthetic_phantoms/2d", "train", tmp_path)
  assert len(source) == SMALL_SIZES["train"]
  assert source[0]["image"].shape == (128, 128, 1)
  assert source[0]["case_id"] == b"train_0000"
  # TFDS split slicing passes through.
  assert (
    len(registry.data_source("synthetic_phantoms/2d", "train[:2]", tmp_path))
    == 2
  )
  sliced = registry.data_source("synthetic_phantoms/2d", "train[1:]", tmp_path)
  assert sliced[0]["case_id"] == b"train_0001"


def test_data_source_before_prepare_fails_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match="registry.prepare"):
    registry.data_source("synthetic_phantoms/3d", "train", tmp_path)
  # Reading never builds.
  assert not list(tmp_path.rglob("*.array_record*"))


def test_prepare_isbi_without_manual_dir_explains_layout(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    registry.prepare("isbi2012_em", tmp_path)
  message = str(info.value)
  assert "was not given" in message
  assert "membrane/train/image/0.png" in message
  assert "train-volume.tif" in message
  with pytest.raises(FileNotFoundError, match="is missing"):
    registry.prepare("isbi2012_em", tmp_path, manual_dir=tmp_path / "absent")


def test_prepare_isbi_with_manual_dir(tmp_path):
  _write_fake_isbi(tmp_path / "em" / "membrane" / "train")
  registry.prepare("isbi2012_em", tmp_path / "tfds", tmp_path / "em")
  source = registry.data_source("isbi2012_em", "validation", tmp_path / "tfds")
  assert len(source) == 6
  assert source[0]["case_id"] == b"slice_24"


def test_prepare_isbi_uses_tfds_default_manual_dir(tmp_path):
  _write_fake_isbi(tmp_path / "downloads" / "manual" / "train")
  registry.prepare("isbi2012_em", tmp_path)
  assert len(registry.data_source("isbi2012_em", "train", tmp_path)) == 24


def test_failed_prepare_leaves_nothing_and_can_be_retried(tmp_path):
  train = tmp_path / "em" / "membrane" / "train"
  _write_fake_isbi(train)
  good = (train / "label" / "25.png").read_bytes()
  (train / "label" / "25.png").write_bytes(b"not a png")
  data_dir = tmp_path / "tfds"

  with pytest.raises(checks.InvalidExampleError, match="slice_25.*25.png"):
    registry.prepare("isbi2012_em", data_dir, tmp_path / "em")
  assert not list(data_dir.rglob("incomplete.*"))
  with pytest.raises(FileNotFoundError):
    registry.data_source("isbi2012_em", "train", data_dir)

  (train / "label" / "25.png").write_bytes(good)
  assert registry.prepare(
    "isbi2012_em", data_dir, tmp_path / "em"
  ).is_prepared()
  assert len(registry.data_source("isbi2012_em", "validation", data_dir)) == 6


@pytest.mark.slow
def test_build_and_read_without_tensorflow(tmp_path):
  """Runs in a fresh interpreter: other tests may have imported TensorFlow."""
  _write_fake_isbi(tmp_path / "em" / "membrane" / "train")
  script = textwrap.dedent(
    f"""
    import json, sys
    from medseg_jax.data import registry
    from medseg_jax.data.synthetic_phantoms import synthetic_phantoms as sp
    for name in ("2d", "3d"):
      config = sp.SyntheticPhantoms.builder_configs[name]
      config.split_sizes = {{"train": 1, "validation": 1, "test": 1}}
    data_dir = {str(tmp_path / "tfds")!r}
    shapes = {{}}
    for name in ("synthetic_phantoms/2d", "synthetic_phantoms/3d",
                 "isbi2012_em"):
      registry.prepare(name, data_dir, manual_dir={str(tmp_path / "em")!r})
      example = registry.data_source(name, "train", data_dir)[0]
      shapes[name] = {{k: [str(v.dtype), list(v.shape)] for k, v in
                       example.items() if k != "case_id"}}
      shapes[name]["case_id"] = type(example["case_id"]).__name__
    shapes["tensorflow_imported"] = "tensorflow" in sys.modules
    print(json.dumps(shapes))
    """
  )
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  result = subprocess.run(
    [sys.executable, "-c", script],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=polling.GENEROUS_TIMEOUT_S,  # A hang, not a slow machine.
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["tensorflow_imported"] is False
  assert report["synthetic_phantoms/2d"] == {
    "image": ["float32", [128, 128, 1]],
    "label": ["uint8", [128, 128]],
    "spacing": ["float32", [2]],
    "case_id": "bytes",
  }
  assert report["synthetic_phantoms/3d"] == {
    "image": ["float32", [64, 64, 64, 1]],
    "label": ["uint8", [64, 64, 64]],
    "spacing": ["float32", [3]],
    "case_id": "bytes",
  }
  assert report["isbi2012_em"] == {
    "image": ["float32", [512, 512, 1]],
    "label": ["uint8", [512, 512]],
    "spacing": ["float32", [2]],
    "case_id": "bytes",
  }


def test_interrupted_build_restarts_cleanly(tmp_path, monkeypatch):
  """A build stopped half-way (Ctrl-C) leaves nothing; the next one works."""
  original = sp.SyntheticPhantoms._generate_examples

  def interrupted(self, *args, **kwargs):
    examples = original(self, *args, **kwargs)
    yield next(examples)
    raise KeyboardInterrupt

  monkeypatch.setattr(sp.SyntheticPhantoms, "_generate_examples", interrupted)
  with pytest.raises(KeyboardInterrupt):
    registry.prepare("synthetic_phantoms/2d", tmp_path)
  assert not list(tmp_path.rglob("incomplete.*"))
  with pytest.raises(FileNotFoundError):
    registry.data_source("synthetic_phantoms/2d", "train", tmp_path)

  monkeypatch.setattr(sp.SyntheticPhantoms, "_generate_examples", original)
  registry.prepare("synthetic_phantoms/2d", tmp_path)
  source = registry.data_source("synthetic_phantoms/2d", "train", tmp_path)
  assert len(source) == SMALL_SIZES["train"]


@pytest.mark.slow
def test_killed_build_leaves_no_complete_looking_dataset(tmp_path):
  """SIGKILL mid-build: the debris is not mistaken for a dataset."""
  ready = tmp_path / "ready"
  script = textwrap.dedent(
    f"""
    import pathlib, threading
    from medseg_jax.data import registry
    from medseg_jax.data.synthetic_phantoms import synthetic_phantoms as sp
    config = sp.SyntheticPhantoms.builder_configs["2d"]
    config.split_sizes = {SMALL_SIZES!r}
    original = sp.SyntheticPhantoms._generate_examples
    def stalled(self, *args, **kwargs):
      examples = original(self, *args, **kwargs)
      yield next(examples)
      pathlib.Path({str(ready)!r}).touch()
      threading.Event().wait()  # Stalls until killed.
    sp.SyntheticPhantoms._generate_examples = stalled
    registry.prepare("synthetic_phantoms/2d", {str(tmp_path / "tfds")!r})
    """
  )
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  proc = subprocess.Popen(
    [sys.executable, "-c", script], cwd=REPO_ROOT, env=env
  )
  try:
    polling.wait_until(lambda: ready.exists() or proc.poll() is not None)
    assert ready.exists(), "the build never started"
  finally:
    proc.kill()
    proc.wait()
  assert list((tmp_path / "tfds").rglob("incomplete.*"))  # Debris remains.
  with pytest.raises(FileNotFoundError):
    registry.data_source("synthetic_phantoms/2d", "train", tmp_path / "tfds")
  registry.prepare("synthetic_phantoms/2d", tmp_path / "tfds")
  source = registry.data_source(
    "synthetic_phantoms/2d", "train", tmp_path / "tfds"
  )
  assert len(source) == SMALL_SIZES["train"]


def test_concurrent_builds_both_succeed(tmp_path, monkeypatch):
  """Two processes building at once: the later rename finds the earlier's
  complete build in place, and uses it instead of failing."""
  original = sp.SyntheticPhantoms._generate_examples
  state = {"raced": False}

  def racing(self, *args, **kwargs):
    if not state["raced"]:
      state["raced"] = True
      # While this build is under way, "another process" builds the same
      # dataset to completion.
      other = tfds.builder(
        "synthetic_phantoms/2d", data_dir=tmp_path, file_format="array_record"
      )
      other.download_and_prepare()
    yield from original(self, *args, **kwargs)

  monkeypatch.setattr(sp.SyntheticPhantoms, "_generate_examples", racing)
  builder = registry.prepare("synthetic_phantoms/2d", tmp_path)
  assert state["raced"]
  assert builder.is_prepared()
  assert not list(tmp_path.rglob("incomplete.*"))
  source = registry.data_source("synthetic_phantoms/2d", "train", tmp_path)
  assert len(source) == SMALL_SIZES["train"]


def test_input_preprocessing_is_the_builders(tmp_path):
  """The steps a new case needs are those the builder applied at build."""
  assert registry.input_preprocessing("synthetic_phantoms/2d", tmp_path) is None
  assert registry.input_preprocessing("isbi2012_em", tmp_path) is None
  # ISIC picks its steps per image (downscaling), so none is given.
  assert registry.input_preprocessing("isic2018/512", tmp_path) is None
  assert (
    registry.input_preprocessing("lesjak_ms", tmp_path)
    == lesjak_ms.LesjakMs.PREPROCESSING
  )
  liver = registry.input_preprocessing("msd/task03_liver", tmp_path)
  assert liver.normalization == ("ct",)
  assert liver.ct_window == (-160.0, 240.0)
  acdc_steps = registry.input_preprocessing("acdc", tmp_path)
  assert acdc_steps.canonical
  assert acdc_steps.spacing is None
  assert acdc_steps.normalization == ("mri",)
