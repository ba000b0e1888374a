"""Test helpers shared by the TFDS builder tests: build, rebuild, failed builds.

from tests.data import builder_testing

builder = builder_testing.prepare(
  promise12.Promise12(data_dir=data_dir), manual_dir
)
# A second prepare must reuse the data: generating again fails the test.
builder_testing.forbid_generation(monkeypatch, promise12.Promise12)
builder_testing.prepare(promise12.Promise12(data_dir=data_dir), manual_dir)

builder_testing.assert_build_fails(
  promise12.Promise12(data_dir=data_dir), manual_dir, match="corrupt",
  mentions=(case_id, path),
)
"""

from __future__ import annotations

import os
import pathlib

import pytest
import tensorflow_datasets as tfds

from medseg_jax.data import checks

PathLike = str | os.PathLike[str]


def prepare(
  builder: tfds.core.DatasetBuilder, manual_dir: PathLike | None = None
) -> tfds.core.DatasetBuilder:
  """Builds `builder` from `manual_dir` (or its download), never from GCS.

  Returns:
    The builder, prepared.
  """
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False
    )
  )
  return builder


def forbid_generation(
  monkeypatch: pytest.MonkeyPatch, builder_class: type
) -> None:
  """Makes any later generation by `builder_class` fail the test.

  A prepare that should reuse the data already built then proves that it
  did: `is_prepared()` alone also holds after a rebuild.
  """

  def fail(*args, **kwargs):
    raise AssertionError(f"{builder_class.__name__} generated examples again.")

  monkeypatch.setattr(builder_class, "_generate_examples", fail)
  monkeypatch.setattr(builder_class, "_split_generators", fail)


def assert_nothing_prepared(builder: tfds.core.DatasetBuilder) -> None:
  """Asserts that `builder`'s data dir holds nothing of a (failed) build.

  Neither `builder` nor a new builder of the same class and config sees a
  prepared dataset, its version folder does not exist, and there are no
  `incomplete.*` folders, ArrayRecord files or `dataset_info.json` left
  anywhere in the data dir.
  """
  assert not builder.is_prepared()
  data_dir = pathlib.Path(os.fspath(builder.data_dir_root))
  fresh = type(builder)(data_dir=data_dir, config=builder.builder_config)
  assert not fresh.is_prepared()
  assert not pathlib.Path(os.fspath(builder.data_path)).exists()
  assert not list(data_dir.rglob("incomplete.*"))
  assert not list(data_dir.rglob("*.array_record*"))
  assert not list(data_dir.rglob("dataset_info.json"))


def assert_build_fails(
  builder: tfds.core.DatasetBuilder,
  manual_dir: PathLike | None,
  *,
  match: str | None = None,
  mentions: tuple[PathLike, ...] = (),
) -> checks.InvalidExampleError:
  """Asserts that building stops with an error and leaves nothing behind.

  Args:
    builder: a builder whose input is bad.
    manual_dir: its manual dir (None for builders that need none).
    match: a regex the error message must match (`pytest.raises`).
    mentions: case ids and paths the message must name.

  Returns:
    The `InvalidExampleError` raised.
  """
  with pytest.raises(checks.InvalidExampleError, match=match) as info:
    prepare(builder, manual_dir)
  for mention in mentions:
    assert os.fspath(mention) in str(info.value)
  assert_nothing_prepared(builder)
  return info.value
