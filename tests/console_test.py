"""Tests for medseg_jax.console: what reaches the console, the file, bars."""

import io
import logging
import math
import os
import pathlib
import re
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest
from absl import logging as absl_logging

from medseg_jax import console

REPO = pathlib.Path(__file__).resolve().parents[1]
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


@pytest.fixture(autouse=True)
def _undo_setup():
  yield
  console.teardown()


def _record(level, msg, pathname, name="absl"):
  """A record as a library at ``pathname`` would log it through absl."""
  return logging.LogRecord(name, level, pathname, 1, msg, None, None)


def _orbax_logs(tmp_path):
  """Real third-party INFO: Orbax logs its manager's creation."""
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    del manager


def _third_party_path(package):
  module = __import__(package)
  return os.path.join(os.path.dirname(module.__file__), "core", "x.py")


OURS = os.path.join(os.path.dirname(console.__file__), "train.py")


def test_default_keeps_third_party_info_off_the_console_but_in_the_file(
  tmp_path,
):
  stream = io.StringIO()
  path = console.setup(tmp_path, 0, process_index=0, stream=stream)
  assert path == tmp_path / "log.txt"
  _orbax_logs(tmp_path)
  tfds_file = _third_party_path("tensorflow_datasets")
  root = logging.getLogger()
  root.handle(_record(logging.INFO, "Load dataset info from /x", tfds_file))
  root.handle(_record(logging.INFO, "Mesh {'data': 1} over 1 devices", OURS))
  root.handle(_record(logging.WARNING, "disk almost full", tfds_file))
  shown = stream.getvalue()
  logged = path.read_text()

  assert "CheckpointManager" not in shown
  assert "Load dataset info" not in shown
  assert "CheckpointManager" in logged  # Orbax's INFO, in the file.
  assert "Load dataset info from /x" in logged
  # Ours: a bare line on the console, absl's prefix in the file.
  assert "Mesh {'data': 1} over 1 devices\n" in shown.splitlines(True)
  mesh_line = next(line for line in logged.splitlines() if "Mesh" in line)
  assert ABSL_PREFIX.match(mesh_line), mesh_line
  # Third-party warnings still reach the console.
  assert "Warning: disk almost full\n" in shown.splitlines(True)


def test_known_noise_goes_to_the_file_only(tmp_path):
  stream = io.StringIO()
  path = console.setup(tmp_path, 0, process_index=0, stream=stream)
  noise = "Variant folder /d/synthetic/1.0.0 has no dataset_info.json"
  tfds_file = _third_party_path("tensorflow_datasets")
  logging.getLogger().handle(_record(logging.WARNING, noise, tfds_file))
  # The same words from our own code are not noise.
  logging.getLogger().handle(_record(logging.WARNING, noise, OURS))
  assert stream.getvalue().count(noise) == 1
  assert path.read_text().count(noise) == 2


def test_verbosity_one_brings_third_party_info_back(tmp_path):
  stream = io.StringIO()
  console.setup(tmp_path, 1, process_index=0, stream=stream)
  _orbax_logs(tmp_path)
  shown = stream.getvalue()
  assert "CheckpointManager" in shown
  # In absl's format, as without the console module.
  line = next(x for x in shown.splitlines() if "CheckpointManager" in x)
  assert ABSL_PREFIX.match(line), line
  # DEBUG takes verbosity 2 (absl's -v 1 alone would give it).
  logging.getLogger("jax._src.dispatch").debug("tracing detail")
  assert "tracing detail" not in stream.getvalue()
  console.setup(tmp_path, 2, process_index=0, stream=stream)
  logging.getLogger("jax._src.dispatch").debug("tracing detail")
  assert "tracing detail" in stream.getvalue()


def test_negative_verbosity_keeps_only_warnings(tmp_path):
  stream = io.StringIO()
  path = console.setup(tmp_path, -1, process_index=0, stream=stream)
  logging.getLogger().handle(_record(logging.INFO, "ours, info", OURS))
  logging.getLogger().handle(_record(logging.ERROR, "ours, error", OURS))
  assert stream.getvalue() == "Error: ours, error\n"
  assert "ours, info" in path.read_text()  # The file still has INFO.


def test_absl_info_reaches_the_file_through_the_real_logger(tmp_path):
  # The level gate: absl.logging.info must not be dropped before the file.
  stream = io.StringIO()
  path = console.setup(tmp_path, 0, process_index=0, stream=stream)
  absl_logging.info("from the test module via absl")
  logging.getLogger("some.library").info("from a plain python logger")
  assert "from the test module via absl" in path.read_text()
  assert "from a plain python logger" in path.read_text()
  assert stream.getvalue() == ""  # Neither is this package's code.


def test_other_processes_write_no_file_and_resume_appends(tmp_path):
  console.setup(tmp_path / "p1", 0, process_index=1, stream=io.StringIO())
  assert not (tmp_path / "p1" / "log.txt").exists()
  for run in range(2):
    path = console.setup(tmp_path, 0, process_index=0, stream=io.StringIO())
    logging.getLogger().handle(_record(logging.INFO, f"run {run}", OURS))
  text = path.read_text()
  assert "run 0" in text and "run 1" in text
  assert text.count("\n--- ") + text.startswith("--- ") == 2  # Two headers.


def test_teardown_restores_the_root_logger(tmp_path):
  root = logging.getLogger()
  handlers, level = list(root.handlers), root.level
  console.setup(tmp_path, 0, process_index=0, stream=io.StringIO())
  assert root.handlers != handlers
  console.teardown()
  assert root.handlers == handlers and root.level == level


# ----------------------------------------------------------------------------
# Progress.
# ----------------------------------------------------------------------------


class _Tty(io.StringIO):
  def isatty(self):
    return True


def test_progress_on_a_file_prints_a_bounded_number_of_lines():
  for total in (7, 100, 1000, 12345):
    stream = io.StringIO()
    with console.TrainProgress(total, stream=stream, enabled=True) as bar:
      for step in range(1, total + 1):
        if step % 5 == 0:
          bar.set_loss(1.0 / step)
        bar.update()
    lines = stream.getvalue().splitlines()
    # One line per 10 % crossed (fewer when steps are coarser than 10 %).
    assert min(total, 10) == len(lines), (total, lines)
    assert "\r" not in stream.getvalue()
    assert lines[-1].startswith(f"train  {total}/{total} (100%)")
    assert lines[0].startswith(f"train  {math.ceil(total / 10)}/{total}")


def test_progress_line_shows_loss_rate_and_eta():
  stream = io.StringIO()
  bar = console.TrainProgress(20, stream=stream, enabled=True)
  bar.update()  # The first step's time (compilation) is not counted.
  bar.set_loss(0.123456)
  bar.update()
  first = stream.getvalue().splitlines()[0]
  assert first.startswith("train  2/20 (10%)  loss 0.1235  ")
  assert re.search(r" [\d.]+ step/s  ETA \d\d:\d\d$", first), first


def test_progress_resumed_counts_from_initial():
  stream = io.StringIO()
  with console.TrainProgress(100, initial=50, stream=stream, enabled=True) as b:
    for _ in range(50):
      b.update()
  lines = stream.getvalue().splitlines()
  assert [line.split()[1] for line in lines] == [
    f"{n}/100" for n in range(60, 101, 10)
  ]


def test_progress_stopped_early_prints_where_it_stopped():
  stream = io.StringIO()
  with console.TrainProgress(1000, stream=stream, enabled=True) as bar:
    for _ in range(37):
      bar.update()
  (line,) = stream.getvalue().splitlines()
  assert line.startswith("train  37/1000 (4%)"), line


def test_progress_disabled_or_transient_and_fast_prints_nothing():
  for kwargs in (dict(enabled=False), dict(enabled=True, leave=False)):
    stream = io.StringIO()
    for _ in console.progress(range(50), desc="eval", stream=stream, **kwargs):
      pass
    assert stream.getvalue() == "", kwargs


def test_progress_without_total_prints_one_line_at_the_end():
  stream = io.StringIO()
  items = list(
    console.progress(
      (i for i in range(30)),
      desc="evaluate",
      unit="case",
      stream=stream,
      enabled=True,
    )
  )
  assert items == list(range(30))
  lines = stream.getvalue().splitlines()
  assert len(lines) == 1 and lines[0].startswith("evaluate  30 case")


def test_progress_on_a_terminal_is_a_tqdm_bar_and_log_lines_stay_whole(
  tmp_path,
):
  stream = _Tty()
  console.setup(tmp_path, 0, process_index=0, stream=stream)
  with console.TrainProgress(40, stream=stream, enabled=True) as bar:
    for step in range(40):
      bar.update()
      if step == 20:
        logging.getLogger().handle(_record(logging.INFO, "validation", OURS))
  text = stream.getvalue()
  assert "\r" in text and "40/40" in text and "100%|" in text
  # The log line was written on a cleared line, not glued to the bar.
  assert re.search(r"(^|\r|\n)validation\n", text), text


@pytest.mark.slow
@pytest.mark.long
def test_main_prints_few_lines_and_logs_everything_to_the_file(
  synthetic_2d_dir, tmp_path
):
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "medseg_jax.main",
      "--config=configs/unet_synthetic.py:runlocal",
      f"--workdir={workdir}",
      f"--config.data_dir={synthetic_2d_dir}",
      "--config.model.features=(4, 8)",
      "--config.data.patch_size=(32, 32)",
      "--config.writer=tensorboard",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-3000:]
  lines = output.splitlines()
  assert len(lines) < 40, output
  assert any(line.startswith("train  20/20 (100%)") for line in lines), output
  assert "step 20: validation mean foreground Dice" in output
  assert "mean foreground Dice over 8 cases" in output
  # TensorFlow's "oneDNN custom operations are on" banner, not our own
  # lowering line (which may name oneDNN convolutions).
  noise_lines = (
    "checkpoint_manager",
    "atomicity",
    "oneDNN custom operations",
    "xla_bridge",
  )
  for noise in noise_lines:
    assert noise not in output, noise
  logged = (workdir / "log.txt").read_text()
  for detail in ("checkpoint_manager.py", "xla_bridge.py", "train/loss="):
    assert detail in logged, detail
