"""Console output for people (placeholder until the console module lands)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def progress(iterable: Iterable[Any], total: int | None = None, **kwargs):
  del total, kwargs
  return iterable
