"""The batching the simulator's routed replicas model (``loadgen.simulator``, ``_Line.formed``) is
Ray Serve's own: ``@serve.batch`` forms the next batch while one runs, closing it after its wait
whether or not the replica is free, so a busy replica runs items that came apart as batches of one."""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 0.1  # the batcher's wait for a second item
BUSY_S = 2.0  # each batch's time: long enough that the later items arrive while the first runs
# Two together, then two 0.8 s apart (eight times WAIT_S, room for a stalled host) while it runs.
SENDS_S = (0.0, 0.02, 0.2, 1.0)


def test_serve_batch_forms_batches_while_the_replica_is_busy(serve_port):
    from ray import serve

    @serve.deployment(max_ongoing_requests=8)
    class Batcher:
        def __init__(self) -> None:
            self.batches: list[list[int]] = []

        @serve.batch(max_batch_size=2, batch_wait_timeout_s=WAIT_S)
        async def run(self, items: list[int]) -> list[int]:
            self.batches.append(list(items))
            await asyncio.sleep(BUSY_S)
            return items

        async def __call__(self, item: int) -> int:
            return await self.run(item)

        def seen(self) -> list[list[int]]:
            return self.batches

    handle = serve.run(Batcher.bind(), name="batching-fact", route_prefix=None)
    try:
        async def send() -> list[int]:
            t0, calls = time.monotonic(), []
            for i, at in enumerate(SENDS_S):
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                calls.append(handle.remote(i))
            return [await c for c in calls]

        assert asyncio.run(send()) == [0, 1, 2, 3]
        batches = handle.seen.remote().result()
    finally:
        serve.delete("batching-fact")
    # Items 2 and 3 both waited for the first batch to end, yet ran apart: each was formed into a
    # batch of its own WAIT_S after it came (a replica that gathered until free would pair them).
    assert batches[-2:] == [[2], [3]]
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]
