"""Time one variant's ``infer`` on real batches, the way a serving replica runs it.

Each (variant, hardware) is measured in a fresh process of its own (``spawn``),
as a Ray Serve replica is: the same ``build_variant(spec, threads=t)`` and the
same ``variant.infer(batch)`` call that ``StageCore`` makes in serving, with
``OMP_NUM_THREADS`` set to the replica's threads. The child loads the model,
then for each batch size warms up and times back-to-back batches in windows
until they agree or the point's time cap is reached (``plan.WindowPolicy``,
perf_analyzer's scheme), and streams every finished point back, so the caller
can save after each one. The variant's own batch-1
call on a fixed input (``reference_seconds``) is timed between the points, so
each point carries the host's drift while it was measured.

Memory on a GPU: the peak CUDA memory allocated by tensors
(``torch.cuda.max_memory_allocated``) since just before the model was built.
Memory on the CPU: ``memory_mb`` is the child's peak resident set (``VmHWM``, reset to
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
from varipipe.profiler.plan import SampledPoint, WindowPolicy
from varipipe.profiler.stats import LatencyStats, summarize
from varipipe.records import VariantSpec

__all__ = ["Hardware", "PointResult", "Stability", "VariantMeasurement", "MeasureError", "cpu_hardware",
           "gpu_hardware", "measure_variant", "make_batch", "reference_seconds"]

# A child that sends nothing for this long is stuck (a batch of the slowest
# variant takes seconds; a point's time cap is 75 s by default, plan.FULL_POINT_CAP_S).
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
    """A GPU replica; ``model`` is the GPU's name, normalised for the label (``NVIDIA H200`` -> ``gpu:h200``)."""
    from varipipe.pipelines.variants._torch_runtime import normalise_gpu_name

    return Hardware(f"gpu:{normalise_gpu_name(model)}", threads=threads, device="gpu")


@dataclass(frozen=True)
class Stability:
    """How steady a point's windows were (``plan.PointSampler``)."""

    windows: int  # windows measured, all window sizes together
    stable: bool  # the last windows agreed within the policy's tolerance before the time cap
    latency_cv: float  # coefficient of variation of the final windows' latency percentile
    throughput_cv: float  # ... and of their throughput
    window_batches: int  # batches per window at the end (after widening)
    widened: int


@dataclass(frozen=True)
class PointResult:
    """One batch size of one variant on one hardware unit."""

    batch: int
    stats: LatencyStats  # of the final windows' batches
    memory_mb: float
    seconds: float  # wall time spent on this point (warm-up included, reference calls not)
    stability: Stability
    reference_before_s: float | None = None  # reference_seconds just before the point ...
    reference_after_s: float | None = None  # ... and just after it


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


def reference_seconds(variant, inputs: Sequence[Payload], calls: int) -> float | None:
    """Median seconds of ``calls`` batch-1 calls on the first input: the host's speed as this model feels it.

    A fixed workload of the same runtime, model and process as the points around it (the variant's
    own batch-1 call on one input that never changes; the LLM decodes greedily and resets its cache
    per request, so the work is the same every time). Timed before the first point and after each
    point of a measuring process, it shows how much the host moved while a point was measured; a
    separate reference program would feel a noisy neighbour differently (a scalar Python loop did:
    benchmarks/README.md, Profiler). None when ``calls`` is 0.
    """
    if calls <= 0:
        return None
    times = []
    for _ in range(calls):
        payloads = make_batch(inputs, 1, 0)
        t0 = time.perf_counter()
        variant.infer(payloads)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _time_point(variant, inputs: Sequence[Payload], batch: int, policy: WindowPolicy,
                ) -> tuple[SampledPoint, float, dict]:
    """Warm up, then time back-to-back batches in windows until ``policy``'s sampler says done."""
    start = time.perf_counter()
    warmup = []
    for w in range(policy.warmup_batches):
        t0 = time.perf_counter()
        variant.infer(make_batch(inputs, batch, w * batch))
        warmup.append(time.perf_counter() - t0)  # the first at a new batch size may compile (GPU)
    warm = warmup[-1] if warmup else 0.0  # the last warm-up batch sizes the windows
    sampler = policy.sampler(batch, warm, time.perf_counter())
    busy = 0.0
    offset = 0
    while not sampler.done:
        payloads = make_batch(inputs, batch, offset)
        offset += batch
        c0, t0 = time.process_time(), time.perf_counter()
        variant.infer(payloads)
        t1 = time.perf_counter()
        busy += time.process_time() - c0
        sampler.add(t1 - t0, t1)
    sampled = sampler.result()
    seconds = time.perf_counter() - start
    n = len(sampled.latencies_s)
    conditions = {"cpu_s_per_batch": busy / n, "wall_s_per_batch": sum(sampled.latencies_s) / n,
                  "cpu_pressure_some_avg10": cpu_pressure(), "warmup_s": warmup}
    return sampled, seconds, conditions


class _HostMemory:
    """Peak RSS (VmHWM, when it could be reset) or current RSS of this process, MiB."""

    def __init__(self, peak: bool) -> None:
        self.peak = peak

    def baseline(self) -> float:
        return _rss_mb()

    def now(self) -> float:
        return _peak_rss_mb() if self.peak else _rss_mb()


class _GpuMemory:
    """Peak CUDA memory allocated by tensors (``torch.cuda.max_memory_allocated``) since the model's
    build, MiB: weights + caches + activations of the largest batch so far."""

    def baseline(self) -> float:
        from varipipe.pipelines.variants._torch_runtime import gpu_peak_mb, reset_gpu_peak

        reset_gpu_peak()
        return gpu_peak_mb()

    def now(self) -> float:
        from varipipe.pipelines.variants._torch_runtime import gpu_peak_mb

        return gpu_peak_mb()


def _measure_here(spec: VariantSpec, hardware: Hardware, inputs: Sequence[Payload], batches: Sequence[int],
                  policy: WindowPolicy, peak_memory: bool) -> Iterator[tuple]:
    """Yields ("loaded", load_s, baseline_mb), then per batch size ("conditions", batch, dict) and
    ("point", PointResult): the conditions say how contended the host was while it was measured.
    The reference calls run before the first point and after each one (interleaved), so each
    point has the reference just before and just after it."""
    importlib.import_module(spec.factory.partition(":")[0])  # library memory is not the model's
    memory = _GpuMemory() if hardware.device == "gpu" else _HostMemory(peak_memory and _reset_peak_rss())
    baseline = memory.baseline()
    t0 = time.perf_counter()
    variant = build_variant(spec, threads=hardware.threads, device=hardware.device)
    variant.load()
    yield ("loaded", time.perf_counter() - t0, baseline)
    try:
        model_warmup = []
        for _ in range(policy.warmup_batches if policy.reference_calls else 0):
            t1 = time.perf_counter()
            variant.infer(make_batch(inputs, 1, 0))  # the first reference must not time a cold model
            model_warmup.append(time.perf_counter() - t1)
        before = reference_seconds(variant, inputs, policy.reference_calls)
        for i, b in enumerate(batches):
            sampled, seconds, conditions = _time_point(variant, inputs, b, policy)
            used = memory.now() - baseline
            after = reference_seconds(variant, inputs, policy.reference_calls)
            if i == 0 and model_warmup:  # batch-1 calls before the first reference: a GPU model compiles here
                conditions["model_warmup_s"] = model_warmup
            yield ("conditions", b, {**conditions, "seconds": seconds, "sampled": sampled})
            yield ("point", PointResult(b, summarize(sampled.point_latencies_s, b), max(used, 0.0), seconds,
                                        _stability(sampled), before, after))
            before = after
    finally:
        variant.unload()


def _stability(s: SampledPoint) -> Stability:
    return Stability(windows=len(s.windows), stable=s.stable, latency_cv=s.latency_cv,
                     throughput_cv=s.throughput_cv, window_batches=s.window_batches, widened=s.widened)


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
    policy: WindowPolicy,
    on_point: Callable[[PointResult], None] | None = None,
    isolate: bool = True,
    on_conditions: Callable[[int, dict], None] | None = None,
    nice: int = 0,
    on_loaded: Callable[[float], None] | None = None,
) -> VariantMeasurement:
    """Measure ``batches`` of one variant on one hardware unit; ``on_point`` sees each as it lands.

    ``on_conditions(batch, dict)`` hears, just before each point, the process CPU
    seconds per batch next to the wall seconds per batch and the host's CPU
    pressure: on a host shared with other work, wall time >> CPU time / threads;
    ``sampled`` holds the point's ``SampledPoint`` (raw latencies and windows).
    ``nice`` (isolated mode): the measuring process's autogroup nice, see ``raise_priority``.
    ``on_loaded(load_s)`` hears the model's build + load time as soon as it is known.
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
            if on_loaded is not None:
                on_loaded(load_s)
        elif event[0] == "conditions" and on_conditions is not None:
            on_conditions(event[1], {**event[2], "autogroup_nice": priority})
        elif event[0] == "point":
            points.append(event[1])
            if on_point is not None:
                on_point(event[1])
    return VariantMeasurement(spec, hardware, tuple(points), load_s, baseline)
