"""The ingress's first-in-first-out gate in front of each stage deployment.

The ingress lets at most as many requests into a stage's deployment handle as the stage's
replicas accept (``max_ongoing_requests`` each); the rest wait here, in arrival order, and
each enters the moment an answer frees a slot. Serve's router then never holds a backlog.

Why not let the router queue them: in a fresh-clone ``make test`` (issue 16, benchmarks/README
"Fresh clones") a backlog of a few hundred requests in the router, built while a stage's one
replica was at ``max_ongoing_requests``, drained at 4 requests/s for 40 s after the replica
was idle again (each answer took 10 ms; Serve's logs show exactly 2 requests every 0.5 s).
Ray Serve 2.60's router explains that figure: a routing task works for one pending request,
but a replica it finds goes to the oldest pending request, and a request a replica rejected
goes back into the queue by age, ahead of newer ones. A task whose own request sits behind
others hands each replica it finds to them and stays in its retry backoff, which grows to
``RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S`` (0.5 s); there are two tasks per replica. With the
gate the router never holds more requests than the replicas take, so no backlog forms there.

The wait here still counts as the stage's queue (``queues.StageQueues.in_flight``: the
ingress counts a request in a stage from before the gate), so admission control and the
adapter see the same queue as before. Pure asyncio, no Ray.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["FifoGate"]


class FifoGate:
    """At most ``capacity`` holders at once; waiters enter in arrival order.

    ``resize`` takes effect at once: a larger capacity lets waiters in, a smaller one lets
    no one in until enough holders leave (holders are never pushed out). A waiter that is
    cancelled leaves the line; one cancelled after it was let in passes its place on.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = self._check(capacity)
        self.holders = 0
        self._line: deque[asyncio.Future[None]] = deque()

    @staticmethod
    def _check(capacity: int) -> int:
        if capacity < 1:
            raise ValueError(f"a gate needs a capacity of at least 1, got {capacity}")
        return int(capacity)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._line if not f.done())

    def resize(self, capacity: int) -> None:
        self._capacity = self._check(capacity)
        self._let_in()

    async def acquire(self) -> None:
        # Every change of holders or capacity lets the line in, so a free place means no one waits.
        if self.holders < self._capacity:
            self.holders += 1
            return
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._line.append(place)
        try:
            await place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled():  # let in, then cancelled before it ran
                self.release()
            raise

    def release(self) -> None:
        if self.holders <= 0:
            raise RuntimeError("gate released more often than acquired")
        self.holders -= 1
        self._let_in()

    def _let_in(self) -> None:
        while self._line and self.holders < self._capacity:
            place = self._line.popleft()
            if not place.done():  # a cancelled waiter's place is skipped
                self.holders += 1
                place.set_result(None)

    async def __aenter__(self) -> FifoGate:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
