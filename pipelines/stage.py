"""A stage replica's logic, free of Ray: hold one variant, switch it safely, run batches.

The Serve deployment in ``app.py`` is a thin wrapper around ``StageCore``. A
variant switch loads the new variant *before* releasing the old one, so a
replica always has a model to serve with; if the new one fails to load, the
old one keeps serving and the error is reported (issue 4).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from varipipe.admission import COLD_BATCHES, after_batch, fresh_estimate, in_force, would_miss
from varipipe.pipelines.variant import Payload, StageTrace, Variant, build_variant
from varipipe.records import StageSpec

__all__ = ["StageConfig", "ReplicaStatus", "StageCore", "rss_mb", "batch_record"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class StageConfig:
    """What the declarative ``user_config`` of a stage deployment carries."""

    variant: str
    max_batch_size: int = 1
    batch_wait_timeout_s: float = 0.0
    generation: int = 0  # the decision's sequence number; lets the applier see it arrive

    @classmethod
    def from_user_config(cls, raw: dict) -> StageConfig:
        return cls(
            variant=str(raw["variant"]),
            max_batch_size=int(raw.get("max_batch_size", 1)),
            batch_wait_timeout_s=float(raw.get("batch_wait_timeout_s", 0.0)),
            generation=int(raw.get("generation", 0)),
        )

    def to_user_config(self) -> dict:
        return {
            "variant": self.variant,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "generation": self.generation,
        }


@dataclass(frozen=True)
class ReplicaStatus:
    """What a replica reports about itself to the controller."""

    replica_id: str
    stage: str
    variant: str
    loaded_variants: tuple[str, ...]
    generation: int
    max_batch_size: int
    batch_wait_timeout_s: float
    rss_mb: float
    last_switch_s: float  # seconds the last variant switch took, model load included
    error: str  # the last configuration error, "" if none
    pid: int
    time: float


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


class StageCore:
    """One replica's model and configuration."""

    def __init__(
        self,
        stage: StageSpec,
        threads: int = 1,
        builder: Callable[[object, int], Variant] | None = None,
        replica_id: str = "",
        device: str = "cpu",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stage = stage
        self.clock = clock  # wall-clock seconds, as requests' deadlines are
        self.threads = threads
        self.device = device  # "gpu": the replica holds a GPU and builds its variants' GPU runtimes
        self._build = builder or (lambda spec, threads: build_variant(spec, threads=threads, device=device))
        self.replica_id = replica_id
        self._lock = threading.Lock()  # serialises configuration changes
        # Held while a batch runs. A model replaced by a switch is released only when no
        # batch runs: llama.cpp's close() under a running generation crashed the replica
        # (SIGSEGV), failing its requests. The switch never waits for a batch: if one is
        # running, that batch releases the retired model when it ends.
        self._batch_lock = threading.Lock()
        self._retired: list[Variant] = []
        self._retired_lock = threading.Lock()
        self.variant: Variant | None = None
        self.config: StageConfig | None = None
        self.error = ""
        self.last_switch_s = 0.0
        self.expected_batch_s = 0.0  # EWMA of the batch compute time: the deadline check's estimate
        self.cold_batches = COLD_BATCHES  # the loaded model's first batches, which it leaves (admission)
        # A copy of the first request served, as it came to this stage: a model switched
        # in runs it once before it serves, so its set-up (a first forward several times a steady
        # one) falls on no request.
        self._warm_input: list[Payload] = []
        self.last_batch_at = 0.0  # wall time the estimate was last measured (admission.in_force)
        # Every variant object this replica built and that is still alive: after a
        # switch only the new one may remain, which shows the old model was released.
        self._alive: weakref.WeakSet = weakref.WeakSet()

    def configure(self, config: StageConfig) -> None:
        """Apply a configuration; a variant that fails to load leaves the old one serving."""
        with self._lock:
            self.error = ""
            if self.variant is None or self.variant.name != config.variant:
                self._switch(config.variant)
            if self.variant is not None and self.variant.name == config.variant:
                self.config = config
            elif self.config is not None:  # keep the old variant's batch settings too
                self.config = StageConfig(self.config.variant, self.config.max_batch_size,
                                          self.config.batch_wait_timeout_s, config.generation)
            else:  # first configuration failed: fall back to the stage's default variant
                self._switch(self.stage.default_variant, keep_error=True)
                self.config = StageConfig(self.stage.default_variant, config.max_batch_size,
                                          config.batch_wait_timeout_s, config.generation)

    def _switch(self, name: str, keep_error: bool = False) -> None:
        t0 = time.perf_counter()
        try:
            new = self._build(self.stage.variant(name), self.threads)
            new.load()
            self._warm_up(new)
            self._alive.add(new)
        except Exception as e:  # noqa: BLE001 - any load failure must leave the old model serving
            msg = f"stage {self.stage.name}: variant {name!r} failed to load: {type(e).__name__}: {e}"
            log.error(msg)
            self.error = msg if not keep_error else self.error or msg
            return
        old, self.variant = self.variant, new  # batches that start from now on run on the new model
        self.expected_batch_s, self.cold_batches = fresh_estimate()  # the new model's own, from its first batches
        if old is not None:
            with self._retired_lock:
                self._retired.append(old)
            del old
            self._release_retired()
        self.last_switch_s = time.perf_counter() - t0
        log.info("stage %s now serves %s (switch took %.2fs)", self.stage.name, name, self.last_switch_s)

    def _warm_up(self, new: Variant) -> None:
        """Run ``new`` once on a request the stage served (none before its first batch), while the
        old model still serves: the first call of a model builds what it runs on (OpenCV DNN: 0.25 s
        against 0.08 s after it for yolov3-tiny-416; over 1 s beside a replica start), and a
        request in that call waited for it. A warm-up that fails is logged and costs nothing else."""
        sample = self._warm_input
        if not sample:
            return
        t0 = time.perf_counter()
        try:
            new.infer(sample)
        except Exception as e:  # noqa: BLE001 - the switch goes on; the first request pays the set-up
            log.warning("stage %s: warm-up of %s failed: %s: %s", self.stage.name, new.name, type(e).__name__, e)
            return
        log.info("stage %s: %s warmed up in %.2fs", self.stage.name, new.name, time.perf_counter() - t0)

    def infer(self, payloads: Sequence[Payload], arrivals: Sequence[float] | None = None) -> list[Payload]:
        """Run one batch through the current variant; attach outputs and traces.

        A request whose deadline would pass before this batch finishes is not run:
        it is marked ``dropped_at`` this stage (admission control, answered 504).
        """
        with self._batch_lock:  # a replaced model is released only after this batch
            out = self._infer(payloads, arrivals)
        self._release_retired()
        return out

    def _release_retired(self) -> None:
        """Unload the models that switches replaced, unless a batch is running (it calls this when done)."""
        if not self._retired or not self._batch_lock.acquire(blocking=False):
            return
        try:
            with self._retired_lock:
                retired, self._retired = self._retired, []
            for variant in retired:
                variant.unload()
        finally:
            self._batch_lock.release()
        if retired:
            del variant, retired
            gc.collect()

    def _infer(self, payloads: Sequence[Payload], arrivals: Sequence[float] | None) -> list[Payload]:
        variant = self.variant  # one reference for the whole batch, even if a switch lands now
        if variant is None:
            raise RuntimeError(f"stage {self.stage.name} has no loaded variant: {self.error}")
        start = self.clock()
        expected = in_force(self.expected_batch_s, self.last_batch_at, start)
        live = []
        for p in payloads:
            if would_miss(start, expected, p.deadline):
                p.dropped_at = self.stage.name
            else:
                live.append(p)
        t0 = time.perf_counter()
        outputs = variant.infer(live) if live else []
        compute = time.perf_counter() - t0
        if len(outputs) != len(live):
            raise RuntimeError(f"variant {variant.name} returned {len(outputs)} outputs for {len(live)} inputs")
        if live and variant is self.variant:  # a batch of a model switched out meanwhile measures nothing
            self.expected_batch_s, self.cold_batches = after_batch(expected, compute, self.cold_batches)
            self.last_batch_at = self.clock()
        # The warm-up sample, taken once (any request served will do), as it came to the stage:
        # copied before the stage adds its output below.
        if live and not self._warm_input:
            p = live[0]
            self._warm_input = [Payload(request_id="warm-up", image=p.image, text=p.text, question=p.question,
                                        outputs=dict(p.outputs))]
        hardware = str(getattr(variant, "hardware", ""))
        queued = {id(p): max(0.0, start - arrivals[i]) if arrivals else 0.0 for i, p in enumerate(payloads)}
        for p, out in zip(live, outputs, strict=True):
            p.outputs[self.stage.name] = out
            p.trace.append(StageTrace(self.stage.name, variant.name, len(live), queued[id(p)], compute, hardware))
        return list(payloads)

    def status(self, now: float) -> ReplicaStatus:
        import os

        cfg = self.config
        return ReplicaStatus(
            replica_id=self.replica_id,
            stage=self.stage.name,
            variant=self.variant.name if self.variant else "",
            loaded_variants=tuple(sorted(v.name for v in list(self._alive))),
            generation=cfg.generation if cfg else -1,
            max_batch_size=cfg.max_batch_size if cfg else 0,
            batch_wait_timeout_s=cfg.batch_wait_timeout_s if cfg else 0.0,
            rss_mb=rss_mb(),
            last_switch_s=self.last_switch_s,
            error=self.error,
            pid=os.getpid(),
            time=now,
        )


def batch_record(stage: str, payloads: Sequence[Payload], now: float):
    """The :class:`~varipipe.pipelines.metrics.BatchRecord` of a batch :meth:`StageCore.infer`
    returned: the items it served (not those it shed), its runtime call's seconds (the trace's:
    what the profiler times), and the tokens its outputs generated (outputs with an int
    ``tokens``: the LLM's captions)."""
    from varipipe.pipelines.metrics import BatchRecord

    served = [p for p in payloads if p.trace and p.trace[-1].stage == stage and not p.dropped_at]
    if not served:
        return BatchRecord(stage, "", 0, 0.0, now, "", 0)
    tr = served[0].trace[-1]
    tokens = sum(t for p in served if isinstance(t := getattr(p.outputs.get(stage), "tokens", None), int))
    return BatchRecord(stage, tr.variant, tr.batch_size, tr.compute_s, now, tr.hardware, tokens)
