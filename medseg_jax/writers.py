"""Metric writers: TensorBoard event files, log lines and a JSONL file.

``metrics.jsonl`` in the work dir holds one ``{"step": ..., name: value}``
line per write: easy to plot without TensorFlow, and what tests read.
TensorBoard summaries need TensorFlow (clu's ``SummaryWriter``); they are
only written when ``kind == "tensorboard"``. Only process 0 writes files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import jax
from clu import metric_writers
from clu.metric_writers import interface
from etils import epath

WRITER_KINDS = ("tensorboard", "logging")


class JsonlWriter(interface.MetricWriter):
  """Appends scalars to ``<workdir>/metrics.jsonl`` (other kinds ignored)."""

  def __init__(self, path: str | epath.Path):
    self._path = epath.Path(path)
    self._file = self._path.open("a")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {"step": int(step)}
    for key, value in scalars.items():
      value = float(value)
      record[key] = value if math.isfinite(value) else str(value)
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()  # Lines are rare; a reader can follow the run.

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    self._file.write(json.dumps({"hparams": dict(hparams)}) + "\n")

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def create_writer(workdir: str, kind: str = "tensorboard") -> Any:
  """Returns a clu ``MetricWriter`` for ``workdir``.

  Args:
    workdir: directory for ``metrics.jsonl`` and TensorBoard event files.
    kind: ``"tensorboard"`` (event files, JSONL and log lines) or
      ``"logging"`` (JSONL and log lines).
  """
  if kind not in WRITER_KINDS:
    raise ValueError(f"Unknown writer {kind!r}; valid: {WRITER_KINDS}.")
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(just_logging=True)
  writers = [metric_writers.LoggingWriter()]
  if kind == "tensorboard":
    writers.append(metric_writers.SummaryWriter(str(workdir)))
  writers.append(JsonlWriter(epath.Path(workdir) / "metrics.jsonl"))
  return metric_writers.AsyncMultiWriter(writers)


def read_jsonl(path: str | epath.Path) -> list[dict[str, Any]]:
  """Reads ``metrics.jsonl`` back (for notebooks and tests)."""
  lines = epath.Path(path).read_text().splitlines()
  return [json.loads(line) for line in lines if line.strip()]
