"""A small open-loop HTTP client for tests: fixed-rate sends, never retries."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Result:
    sent_at: float
    status: int  # 0 = transport error
    latency_s: float
    body: dict | None
    error: str = ""


async def _one(client: httpx.AsyncClient, url: str, data: bytes, t0: float, content_type: str) -> Result:
    start = time.perf_counter()
    try:
        r = await client.post(url, content=data, headers={"content-type": content_type})
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
        return Result(start - t0, r.status_code, time.perf_counter() - start, body)
    except httpx.HTTPError as e:
        return Result(start - t0, 0, time.perf_counter() - start, None, f"{type(e).__name__}: {e}")


async def open_loop(url: str, data: bytes, rate_rps: float, duration_s: float, timeout_s: float = 60.0,
                    content_type: str = "image/png") -> list[Result]:
    """Send ``rate_rps`` requests per second for ``duration_s`` regardless of replies."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        t0 = time.perf_counter()
        tasks = []
        n = int(rate_rps * duration_s)
        for i in range(n):
            delay = t0 + i / rate_rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, url, data, t0, content_type)))
        return list(await asyncio.gather(*tasks))


async def closed_loop_capacity(url: str, data: bytes, clients: int, duration_s: float) -> float:
    """Completed requests per second with ``clients`` back-to-back senders."""
    done = 0
    async with httpx.AsyncClient(timeout=60.0) as client:
        end = time.perf_counter() + duration_s

        async def worker():
            nonlocal done
            while time.perf_counter() < end:
                r = await client.post(url, content=data, headers={"content-type": "image/png"})
                done += r.status_code == 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return done / (time.perf_counter() - t0)
