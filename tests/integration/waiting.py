"""Wait for a condition, never for a sleep's length (house rule: tests wait on events or conditions)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# How long a condition that a working system meets within a second or two may take on a
# loaded 2-core CI host before the test fails: only a broken run waits this long.
CONDITION_TIMEOUT_S = 60.0
POLL_S = 0.1  # how often the condition is checked (not how long anything takes)


def eventually(check: Callable[[], T], what: str, timeout_s: float = CONDITION_TIMEOUT_S) -> T:
    """``check()``'s first truthy result; AssertionError naming ``what`` if none within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what} (last: {result!r})")
        time.sleep(POLL_S)
