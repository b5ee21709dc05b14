"""Buffer small records in a replica and push them to the controller in the background."""

from __future__ import annotations

import asyncio
import logging

__all__ = ["Flusher", "FLUSH_INTERVAL_S"]

log = logging.getLogger(__name__)

# Replicas push buffered records to the controller this often (s): fresh enough for a
# 10 s adapter interval and a 1-2 s dashboard refresh, few enough calls on 2 cores.
FLUSH_INTERVAL_S = 0.5


class Flusher:
    """Buffers records and sends them to a controller method in the background."""

    def __init__(self, send) -> None:
        self._send = send
        self._buf: list = []
        self._task: asyncio.Task | None = None

    def add(self, record) -> None:
        self._buf.append(record)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._buf:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            batch, self._buf = self._buf, []
            try:
                await self._send(batch)
            except Exception:  # noqa: BLE001 - metrics must never break serving
                log.exception("could not push %d records to the controller", len(batch))
