"""Time one variant's ``infer`` on real batches, the way a serving replica runs it.

Each (variant, hardware) is measured in a fresh process of its own (``spawn``),
as a Ray Serve replica is: the same ``build_variant(spec, threads=t)`` and the
same ``variant.infer(batch)`` call that ``StageCore`` makes in serving, with
``OMP_NUM_THREADS`` set to the replica's threads. The child loads the model,
then for each batch size warms up and times back-to-back batches until the
``SamplingPolicy`` says stop, and streams every finished point back, so the
caller can save after each one.

Memory: ``memory_mb`` is the child's peak resident set (``VmHWM``, reset to
the current RSS just before the model is built, after the runtime library was
imported) once the batches measured so far have run, minus that starting RSS: weights, runtime session and
activations of the largest batch so far. It excludes the interpreter and
library code every replica of the stage pays anyway; the measured baseline is
reported in ``VariantMeasurement.baseline_mb``. ``isolate=False`` measures in
this process instead (tests, quick looks): memory is then the RSS growth.
"""

from __future__ import annotations

import dataclasses
import importlib
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from varipipe.errors import VaripipeError
from varipipe.pipelines.variant import Payload, build_variant
from varipipe.profiler.plan import SamplingPolicy
from varipipe.profiler.stats import LatencyStats, summarize
from varipipe.records import VariantSpec

__all__ = ["Hardware", "PointResult", "VariantMeasurement", "MeasureError", "cpu_hardware", "gpu_hardware",
           "measure_variant", "make_batch"]

# A child that sends nothing for this long is stuck (a batch of the slowest
# variant takes seconds; a point's time box is 60 s by default).
_CHILD_SILENCE_LIMIT_S = 900.0


class MeasureError(VaripipeError):
    """Measuring a variant failed; names the variant and carries the child's traceback."""


@dataclass(frozen=True)
class Hardware:
    """A hardware unit a replica gets: its label in the profile and how to build for it."""

    label: str  # "cpu:1", "cpu:2", "gpu:<model>"
    threads: int
    device: str  # "cpu" | "gpu"


def cpu_hardware(cores: int) -> Hardware:
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores!r}")
    return Hardware(f"cpu:{cores}", threads=cores, device="cpu")


def gpu_hardware(model: str, threads: int = 1) -> Hardware:
    return Hardware(f"gpu:{model}", threads=threads, device="gpu")


@dataclass(frozen=True)
class PointResult:
    """One batch size of one variant on one hardware unit."""

    batch: int
    stats: LatencyStats
    memory_mb: float
    seconds: float  # wall time spent sampling this point (warm-up included)


@dataclass(frozen=True)
class VariantMeasurement:
    spec: VariantSpec
    hardware: Hardware
    points: tuple[PointResult, ...]
    load_s: float
    baseline_mb: float


def make_batch(inputs: Sequence[Payload], batch: int, offset: int) -> list[Payload]:
    """``batch`` fresh payloads taken round-robin from ``inputs`` starting at ``offset``.

    Fresh copies (outside the timed region) so a variant that writes into its
    payloads cannot change the next sample; rotating the start mixes the
    inputs, so a fan-out stage sees its real spread of items per request.
    """
    n = len(inputs)
    return [dataclasses.replace(inputs[(offset + j) % n], outputs=dict(inputs[(offset + j) % n].outputs), trace=[])
            for j in range(batch)]


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark to the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak RSS since the last reset (VmHWM), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return _rss_mb()


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI), 0..1."""
    try:
        with open("/proc/pressure/cpu") as f:
            first = f.readline().split()
        return float(first[1].partition("=")[2]) / 100.0
    except (OSError, ValueError, IndexError):
        return None


# Host-speed reference: a fixed pure-Python loop (about 20 ms on this machine kind),
# timed REFERENCE_REPEATS times just before and just after each point. On a shared
# or virtualised host the core itself runs faster or slower from minute to minute;
# the reference shows that drift next to the point's latencies (``conditions``).
_REFERENCE_LOOP = 50_000
REFERENCE_REPEATS = 5


def host_speed_reference_s() -> float:
    """Median seconds of the fixed reference loop: larger means the host is slower right now."""
    times = []
    for _ in range(REFERENCE_REPEATS):
        t0 = time.perf_counter()
        total = 0
        for i in range(_REFERENCE_LOOP):
            total += i * i
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _time_point(variant, inputs: Sequence[Payload], batch: int, policy: SamplingPolicy,
                ) -> tuple[list[float], float, dict]:
    ref_before = host_speed_reference_s()
    start = time.perf_counter()
    for w in range(policy.warmup_batches):
        variant.infer(make_batch(inputs, batch, w * batch))
    samples: list[float] = []
    busy = 0.0
    sampling_start = time.perf_counter()
    offset = 0
    while not policy.done(batch, len(samples), time.perf_counter() - sampling_start):
        payloads = make_batch(inputs, batch, offset)
        offset += batch
        c0, t0 = time.process_time(), time.perf_counter()
        variant.infer(payloads)
        samples.append(time.perf_counter() - t0)
        busy += time.process_time() - c0
    seconds = time.perf_counter() - start
    conditions = {"cpu_s_per_batch": busy / len(samples), "wall_s_per_batch": sum(samples) / len(samples),
                  "cpu_pressure_some_avg10": cpu_pressure(),
                  "host_speed_ref_s": (ref_before + host_speed_reference_s()) / 2,
                  "latencies_s": samples}
    return samples, seconds, conditions


def _measure_here(spec: VariantSpec, hardware: Hardware, inputs: Sequence[Payload], batches: Sequence[int],
                  policy: SamplingPolicy, peak_memory: bool) -> Iterator[tuple]:
    """Yields ("loaded", load_s, baseline_mb), then per batch size ("conditions", batch, dict) and
    ("point", PointResult): the conditions say how contended the host was while it was measured."""
    importlib.import_module(spec.factory.partition(":")[0])  # library memory is not the model's
    peak_memory = peak_memory and _reset_peak_rss()
    baseline = _rss_mb()
    t0 = time.perf_counter()
    variant = build_variant(spec, threads=hardware.threads, device=hardware.device)
    variant.load()
    yield ("loaded", time.perf_counter() - t0, baseline)
    try:
        for b in batches:
            samples, seconds, conditions = _time_point(variant, inputs, b, policy)
            used = (_peak_rss_mb() if peak_memory else _rss_mb()) - baseline
            yield ("conditions", b, conditions)
            yield ("point", PointResult(b, summarize(samples, b), max(used, 0.0), seconds))
    finally:
        variant.unload()


def raise_priority(nice: int) -> int | None:
    """Put this process in a session (so a scheduler autogroup) of its own with ``nice``.

    Linux schedules autogroups (one per session) fairly against each other, so
    on a host shared with other sessions' jobs a measuring process gets a slice
    of the CPU however idle its own session is; a negative autogroup nice gives
    it the share a dedicated replica would have. Needs root (or CAP_SYS_NICE)
    and autogroups; returns the nice now in force, or None where not possible.
    """
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader: the autogroup is this session's
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
        return nice
    except OSError:
        return None


def _child(conn, spec, hardware, inputs, batches, policy, nice) -> None:
    try:
        if nice:
            conn.send(("priority", raise_priority(nice)))
        for event in _measure_here(spec, hardware, inputs, batches, policy, peak_memory=True):
            conn.send(event)
        conn.send(("done",))
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent
        conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
    finally:
        conn.close()


@contextmanager
def _thread_env(threads: int):
    """OMP/MKL thread counts of a replica with ``threads`` cores, for a child about to start."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({k: str(threads) for k in names})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _events_from_child(spec, hardware, inputs, batches, policy, nice) -> Iterator[tuple]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, spec, hardware, list(inputs), tuple(batches), policy, nice),
                       name=f"profile-{spec.stage}-{spec.name}-{hardware.label}", daemon=True)
    with _thread_env(hardware.threads):
        proc.start()
    child.close()
    try:
        while True:
            if not parent.poll(_CHILD_SILENCE_LIMIT_S):
                raise MeasureError(f"{spec.stage}/{spec.name} on {hardware.label}: no answer from the "
                                   f"measuring process for {_CHILD_SILENCE_LIMIT_S:.0f} s")
            try:
                event = parent.recv()
            except EOFError as e:
                raise MeasureError(f"{spec.stage}/{spec.name} on {hardware.label}: measuring process died "
                                   f"(exit code {proc.exitcode}); out of memory?") from e
            if event[0] == "done":
                return
            if event[0] == "error":
                raise MeasureError(f"{spec.stage}/{spec.name} on {hardware.label}: {event[1]}\n{event[2]}")
            yield event
    finally:
        parent.close()
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def measure_variant(
    spec: VariantSpec,
    hardware: Hardware,
    inputs: Sequence[Payload],
    batches: Sequence[int],
    policy: SamplingPolicy,
    on_point: Callable[[PointResult], None] | None = None,
    isolate: bool = True,
    on_conditions: Callable[[int, dict], None] | None = None,
    nice: int = 0,
) -> VariantMeasurement:
    """Measure ``batches`` of one variant on one hardware unit; ``on_point`` sees each as it lands.

    ``on_conditions(batch, dict)`` hears, just before each point, the process CPU
    seconds per batch next to the wall seconds per batch and the host's CPU
    pressure: on a host shared with other work, wall time >> CPU time / threads;
    ``latencies_s`` holds the point's raw per-batch latencies in measuring order.
    ``nice`` (isolated mode): the measuring process's autogroup nice, see ``raise_priority``.
    """
    if not inputs:
        raise ValueError(f"no inputs to measure {spec.stage}/{spec.name} with")
    events = (_events_from_child(spec, hardware, inputs, batches, policy, nice) if isolate
              else _measure_here(spec, hardware, inputs, batches, policy, peak_memory=False))
    load_s, baseline, points, priority = 0.0, 0.0, [], None
    for event in events:
        if event[0] == "priority":
            priority = event[1]
        elif event[0] == "loaded":
            load_s, baseline = event[1], event[2]
        elif event[0] == "conditions" and on_conditions is not None:
            on_conditions(event[1], {**event[2], "autogroup_nice": priority})
        elif event[0] == "point":
            points.append(event[1])
            if on_point is not None:
                on_point(event[1])
    return VariantMeasurement(spec, hardware, tuple(points), load_s, baseline)
