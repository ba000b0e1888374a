"""Waiting on another process without letting the wait decide a test.

A test that waits for a child (a checkpoint to appear, a build to start)
polls for the condition with a bound far above any expected wait, so that a
busy machine only makes it slower; the test then asserts on what happened,
never on how long it took.
"""

import time
from collections.abc import Callable

# Far above any wait in the suite (seconds); reached only if a child hangs.
GENEROUS_TIMEOUT_S = 900.0


def wait_until(
  condition: Callable[[], bool],
  *,
  timeout_s: float = GENEROUS_TIMEOUT_S,
  interval_s: float = 0.05,
) -> bool:
  """Polls ``condition()`` until it is true; returns its last value.

  Args:
    condition: cheap and side-effect free, e.g. a file exists or a child
      process exited.
    timeout_s: the bound; a hang, not a slow machine, should reach it.
    interval_s: the pause between polls; it only trades CPU for latency.

  Returns:
    True once ``condition()`` holds; False if ``timeout_s`` passed first.
  """
  deadline = time.monotonic() + timeout_s
  while not condition():
    if time.monotonic() > deadline:
      return condition()
    time.sleep(interval_s)
  return True
