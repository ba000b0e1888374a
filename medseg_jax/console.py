"""The console is for people: quiet logs, a log file, progress bars.

An entry point calls ``setup(workdir)`` once, after its flags are parsed
and before the heavy imports::

  console.setup(FLAGS.workdir)  # The verbosity comes from absl's -v flag.

  with console.TrainProgress(num_steps) as bar:  # The training loop.
    ...; bar.set_loss(loss); bar.update()

  for case in console.progress(cases, desc="evaluate", unit="case"): ...

What ``setup`` does at the default verbosity (0):

* The console shows warnings and errors from every library, and the INFO
  lines of this package (a handful per run) without absl's prefix.
  INFO from Orbax, TFDS, grain, clu's metric writer, jax and absl itself
  goes to the log file only.
* ``<workdir>/log.txt`` (process 0, appended on resume) gets the full log:
  every record at INFO and above, third-party included, in absl's format,
  and the native (C++) messages TensorFlow prints while it is imported.
* TFDS progress bars stay on a terminal and are off in files and CI logs.

``--verbosity=1`` (absl's ``-v 1``) lets every library's INFO through to
the console in absl's format, as absl's default did; ``--verbosity=2`` adds
DEBUG (what absl's ``-v 1`` alone would give); ``--verbosity=-1`` keeps
only warnings.

Progress: ``Progress`` (and ``progress``, its iterator form) draws a tqdm
bar on a terminal; on anything else (a file, a CI log, a pipe) it prints a
plain line at every ``every_percent`` of the total, so a run writes at most
about ``100 / every_percent + 2`` lines however long it is. Only process 0
shows it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import io
import logging
import os
import pathlib
import re
import sys
import time
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any
from typing import TextIO
from typing import TypeVar

import tqdm as tqdm_lib
from absl import flags
from absl import logging as absl_logging

T = TypeVar("T")

LOG_FILE = "log.txt"
_PACKAGE_DIR = os.path.realpath(os.path.dirname(__file__)) + os.sep

# Third-party records that are noise on the console at the default
# verbosity although they are warnings: (logger name or source path
# regex, message regex). They still go to the log file.
KNOWN_NOISE = (
  # TFDS, about to build a dataset for the first time: nothing is wrong.
  (r"tensorflow_datasets", r"has no dataset_info\.json"),
  # TFDS, opening a builder config made at run time (from_folder data).
  (r"tensorflow_datasets", r"Using custom data configuration"),
)


def _root_level(verbosity: int) -> int:
  """INFO up to verbosity 1 (the file always has INFO); 2 is DEBUG, then
  absl's vlog levels."""
  if verbosity <= 1:
    return logging.INFO
  return absl_logging.converter.absl_to_standard(verbosity - 1)


@functools.lru_cache(maxsize=1024)
def _is_our_file(pathname: str) -> bool:
  return os.path.realpath(pathname).startswith(_PACKAGE_DIR)


def _is_ours(record: logging.LogRecord) -> bool:
  return _is_our_file(record.pathname)


def _is_known_noise(record: logging.LogRecord) -> bool:
  source = f"{record.name} {record.pathname}"
  message = record.getMessage()
  return any(
    re.search(where, source) and re.search(what, message)
    for where, what in KNOWN_NOISE
  )


class ConsoleFilter(logging.Filter):
  """Which records reach the console (see the module docstring)."""

  def __init__(self, verbosity: int):
    super().__init__()
    self.verbosity = verbosity

  def filter(self, record: logging.LogRecord) -> bool:
    if self.verbosity >= 1:
      return True
    if self.verbosity < 0:
      return record.levelno >= logging.WARNING
    if _is_ours(record):
      return record.levelno >= logging.INFO
    return record.levelno >= logging.WARNING and not _is_known_noise(record)


class _ShortFormatter(logging.Formatter):
  """The message alone for INFO; ``Warning: message`` above it."""

  def format(self, record: logging.LogRecord) -> str:
    text = super().format(record)
    if record.levelno >= logging.WARNING:
      text = f"{record.levelname.capitalize()}: {text}"
    return text


def write(text: str, stream: TextIO | None = None) -> None:
  """Prints a line on the console (``sys.stderr``) above any progress bar."""
  _write_line(stream if stream is not None else sys.stderr, text)


def _write_line(stream: TextIO, text: str) -> None:
  """Writes one line, clearing and redrawing any tqdm bar on the stream."""
  if getattr(tqdm_lib.tqdm, "_instances", None):
    with tqdm_lib.tqdm.external_write_mode(file=stream):
      stream.write(text + "\n")
      stream.flush()
  else:
    stream.write(text + "\n")
    stream.flush()


class ConsoleHandler(logging.Handler):
  """Writes records to a stream without tearing a progress bar apart.

  Records at FATAL go to absl's own handler when there is one, so that
  ``absl.logging.fatal`` still aborts the process.
  """

  def __init__(self, stream: TextIO, fatal_handler=None):
    super().__init__()
    self.stream = stream
    self._fatal_handler = fatal_handler

  def emit(self, record: logging.LogRecord) -> None:
    if record.levelno >= logging.FATAL and self._fatal_handler is not None:
      self._fatal_handler.handle(record)
      return
    try:
      _write_line(self.stream, self.format(record))
    except Exception:  # noqa: BLE001 - logging must never raise.
      self.handleError(record)


class _Collector(logging.Handler):
  def __init__(self, records: list[logging.LogRecord]):
    super().__init__()
    self.records = records

  def emit(self, record: logging.LogRecord) -> None:
    self.records.append(record)


@dataclasses.dataclass
class _Installed:
  console: ConsoleHandler
  file: logging.Handler | None
  removed: list[logging.Handler]
  root_level: int
  tfds_bar_disabled: bool


_installed: _Installed | None = None


def _flag_verbosity() -> int:
  try:
    return int(flags.FLAGS.verbosity) if flags.FLAGS.is_parsed() else 0
  except (AttributeError, flags.Error):
    return 0


def _import_tensorflow_quietly(sink: pathlib.Path | None) -> None:
  """Imports TensorFlow with the native stderr (file descriptor 2) sent to
  ``sink`` (or nowhere): TF 2.20+ prints its C++ start-up messages through
  absl's C++ logging, which ignores ``TF_CPP_MIN_LOG_LEVEL``."""
  if "tensorflow" in sys.modules:
    return
  if importlib.util.find_spec("tensorflow") is None:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(sink or os.devnull, "ab") as out:
      os.dup2(out.fileno(), 2)
      try:
        import tensorflow  # noqa: F401, PLC0415
      except ImportError:
        pass  # The caller's own import reports it, visibly.
      finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
  finally:
    os.close(saved)


def _disable_tfds_progress_bar() -> bool:
  if importlib.util.find_spec("tensorflow_datasets") is None:
    return False
  import tensorflow_datasets as tfds  # noqa: PLC0415

  tfds.disable_progress_bar()
  return True


def setup(
  workdir: str | os.PathLike[str] | None,
  verbosity: int | None = None,
  *,
  process_index: int | None = None,
  stream: TextIO | None = None,
) -> pathlib.Path | None:
  """Configures the console and the log file; returns the file's path.

  Calling it again replaces the previous set-up; ``teardown`` undoes it.

  Args:
    workdir: where ``log.txt`` goes (created if missing); None for no file.
    verbosity: absl verbosity; None reads ``--verbosity`` when the flags
      are parsed, else 0.
    process_index: this process's index; only process 0 writes the file.
      None asks ``jax.process_index()``, which starts the JAX backends
      (call it after ``jax.distributed.initialize``).
    stream: the console (default ``sys.stderr``).
  """
  teardown()
  global _installed
  if verbosity is None:
    verbosity = _flag_verbosity()
  stream = stream if stream is not None else sys.stderr
  root = logging.getLogger()
  root_level = root.level
  # INFO reaches the handlers, so the log file has it; the console filters.
  # This replaces the level absl's flag set (there, -v 1 means DEBUG).
  root.setLevel(_root_level(verbosity))

  absl_handler = absl_logging.get_absl_handler()
  removed = [absl_handler] if absl_handler in root.handlers else []
  for handler in removed:
    root.removeHandler(handler)
  console = ConsoleHandler(stream, fatal_handler=absl_handler)
  console.addFilter(ConsoleFilter(verbosity))
  console.setFormatter(
    absl_logging.PythonFormatter() if verbosity >= 1 else _ShortFormatter()
  )
  root.addHandler(console)
  _installed = _Installed(console, None, removed, root_level, False)
  early = []  # What starting the backends logs, for the file.
  if process_index is None:
    collector = _Collector(early)
    root.addHandler(collector)
    try:
      import jax  # noqa: PLC0415

      process_index = jax.process_index()
    finally:
      root.removeHandler(collector)

  path = file_handler = None
  if workdir is not None and process_index == 0:
    path = pathlib.Path(workdir).expanduser().absolute() / LOG_FILE
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError as e:  # E.g. a read-only run directory: go on without.
      logging.warning("No log file: %s", e)
      path = None
  if file_handler is not None:
    file_handler.setFormatter(absl_logging.PythonFormatter())
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    file_handler.stream.write(f"--- {stamp} {' '.join(sys.argv)}\n")
    for record in early:
      file_handler.handle(record)
    root.addHandler(file_handler)
    _installed.file = file_handler

  quiet = verbosity <= 0
  if quiet:
    _import_tensorflow_quietly(path)
  if quiet and not _isatty(stream):
    _installed.tfds_bar_disabled = _disable_tfds_progress_bar()
  return path


def teardown() -> None:
  """Undoes ``setup``: the previous handlers and levels come back."""
  global _installed
  if _installed is None:
    return
  root = logging.getLogger()
  root.removeHandler(_installed.console)
  if _installed.file is not None:
    root.removeHandler(_installed.file)
    _installed.file.close()
  for handler in _installed.removed:
    root.addHandler(handler)
  root.setLevel(_installed.root_level)
  if _installed.tfds_bar_disabled:
    import tensorflow_datasets as tfds  # noqa: PLC0415

    tfds.enable_progress_bar()
  _installed = None


# ----------------------------------------------------------------------------
# Progress.
# ----------------------------------------------------------------------------


def _isatty(stream: Any) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False


def _has_width(stream: Any) -> bool:
  """False for a terminal of zero columns (some CI ptys): tqdm draws
  nothing there, so the plain lines are used."""
  try:
    return os.get_terminal_size(stream.fileno()).columns > 0
  except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
    return True  # Not a real file descriptor (e.g. a test's stream).


def _main_process() -> bool:
  if "jax" not in sys.modules:
    return True
  import jax  # noqa: PLC0415

  return jax.process_index() == 0


class Progress:
  """A progress display: a tqdm bar on a terminal, else a few plain lines.

  On a non-terminal stream a line is printed each time the count crosses a
  multiple of ``every_percent`` of ``total`` (if at least ``min_interval``
  seconds passed since the last line), and a last line at ``close`` when
  the count stopped elsewhere; without a ``total``, one line at ``close``.
  With ``leave=False`` (a transient display, e.g. validation inside
  training) the bar vanishes when done and the plain lines appear only if
  the loop is slow (``min_interval`` defaults to 30 s).

  Args:
    total: the count at completion, or None if unknown.
    desc: a short name printed first.
    unit: what is counted (``"step"``, ``"case"``).
    initial: the count already done (a resumed run).
    stream: default ``sys.stderr``.
    enabled: default: on in process 0 only.
    leave: keep the finished bar (and the final plain line).
    every_percent: the plain lines' spacing.
    min_interval: see above; default 0, or 30 with ``leave=False``.
  """

  def __init__(
    self,
    total: int | None,
    *,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    stream: TextIO | None = None,
    enabled: bool | None = None,
    leave: bool = True,
    every_percent: float = 10.0,
    min_interval: float | None = None,
  ):
    self.total = total
    self.desc = desc
    self.unit = unit
    self.n = initial
    self.stream = stream if stream is not None else sys.stderr
    self.enabled = _main_process() if enabled is None else enabled
    self.leave = leave
    self.every_percent = every_percent
    self.min_interval = (
      min_interval if min_interval is not None else (0.0 if leave else 30.0)
    )
    self._postfix: dict[str, str] = {}
    self._bar = None
    self._start_n = initial  # Rates count from the first update on.
    self._start_t: float | None = None
    self._created_t = self._last_line_t = time.monotonic()
    self._last_line_n = initial
    self._printed = False
    self._closed = False
    if self.enabled and _isatty(self.stream) and _has_width(self.stream):
      self._bar = tqdm_lib.tqdm(
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        file=self.stream,
        leave=leave,
        dynamic_ncols=True,
        mininterval=0.5,
      )

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def set_postfix(self, **values: float | str) -> None:
    """Values shown after the count, e.g. ``loss=0.1234``."""
    self._postfix = {
      k: f"{v:.4g}" if isinstance(v, float) else str(v)
      for k, v in values.items()
    }
    if self._bar is not None:
      self._bar.set_postfix(self._postfix, refresh=False)

  def update(self, n: int = 1) -> None:
    """Counts ``n`` more."""
    now = time.monotonic()
    if self._start_t is None:
      # The first item often includes compilation: rates start after it.
      self._start_t, self._start_n = now, self.n + n
    previous, self.n = self.n, self.n + n
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(n)
      return
    if not self.total or self.every_percent <= 0:
      return
    step = self.every_percent * self.total / 100.0
    crossed = int(self.n // step) > int(previous // step)
    if crossed and now - self._last_line_t >= self.min_interval:
      self._print_line(now)

  def write(self, text: str) -> None:
    """Prints a line above the bar (process 0 only)."""
    if self.enabled:
      _write_line(self.stream, text)

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    if self._bar is not None:
      self._bar.close()
      return
    if not self.enabled or self.n == self._last_line_n:
      return
    if self.leave or self._printed:
      self._print_line(time.monotonic())

  def _rate(self, now: float) -> float | None:
    if self._start_t is None or self.n <= self._start_n:
      return None
    return (self.n - self._start_n) / max(now - self._start_t, 1e-9)

  def _print_line(self, now: float) -> None:
    parts = [self.desc]
    if self.total:
      percent = 100.0 * self.n / self.total
      parts.append(f"{self.n}/{self.total} ({percent:.0f}%)")
    else:
      parts.append(f"{self.n} {self.unit}")
    parts += [f"{k} {v}" for k, v in self._postfix.items()]
    rate = self._rate(now)
    if rate:
      parts.append(f"{rate:.2f} {self.unit}/s")
      if self.total and self.n < self.total:
        eta = (self.total - self.n) / rate
        parts.append(f"ETA {tqdm_lib.tqdm.format_interval(eta)}")
    if not self.total or self.n >= self.total:
      elapsed = now - self._created_t
      parts.append(f"in {tqdm_lib.tqdm.format_interval(elapsed)}")
    _write_line(self.stream, "  ".join(parts))
    self._last_line_t, self._last_line_n = now, self.n
    self._printed = True


class TrainProgress(Progress):
  """The training loop's display: steps, running loss, steps/s, ETA."""

  def __init__(self, num_steps: int, *, initial: int = 0, **kwargs):
    kwargs.setdefault("desc", "train")
    kwargs.setdefault("unit", "step")
    super().__init__(num_steps, initial=initial, **kwargs)

  def set_loss(self, loss: float) -> None:
    """The loss to show: the mean over the last logging window."""
    self.set_postfix(loss=float(loss))


def progress(
  iterable: Iterable[T],
  total: int | None = None,
  desc: str = "",
  **kwargs,
) -> Iterator[T]:
  """Yields ``iterable``'s items while showing a ``Progress``.

  ``total`` defaults to ``len(iterable)`` when it has one; ``kwargs`` go
  to ``Progress`` (``unit``, ``leave``, ``stream``, ``enabled``...).
  """
  if total is None and hasattr(iterable, "__len__"):
    total = len(iterable)  # type: ignore[arg-type]
  with Progress(total, desc=desc, **kwargs) as bar:
    for item in iterable:
      yield item
      bar.update(1)
