"""A profile point with test defaults, shared by the profiler's unit tests."""

from __future__ import annotations

from varipipe.records import ProfilePoint


def point(stage="det", variant="small", batch=1, hardware="cpu:1", latency=0.01, **kw) -> ProfilePoint:
    fields = dict(
        stage=stage, variant=variant, batch=batch, hardware=hardware,
        latency_p50_s=latency, latency_p95_s=latency * 1.1, latency_p99_s=latency * 1.2,
        throughput_rps=batch / latency, memory_mb=10.0, samples=200, accuracy=0.5,
        accuracy_kind="declared", accuracy_source="test figure", latency_mean_s=latency,
    )
    fields.update(kw)
    return ProfilePoint(**fields)
