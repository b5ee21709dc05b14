"""CPU-seconds that a live reconfiguration burns: a replica start, a variant switch.

On one host every replica shares the same cores, so a new replica process
importing its runtime and loading its model slows the batches already running.
The simulator charges that CPU in ``shared`` mode
(``loadgen.simulator.REPLICA_START_CPU`` and ``VARIANT_SWITCH_CPU``); this
script measures it on real Ray Serve with the real models of ``vision-caption-ci``
(default) or the flagship ``vision-caption``.

For each change it applies the decision (the applier returns once every changed
replica is RUNNING with its model loaded), waits ``SETTLE_S`` more, and sums the
CPU time (user + system, per thread from /proc) of every process of the local Ray session -- the
driver and all its descendants: GCS, raylet, Serve controller, proxy, replicas
-- over that window, minus the same processes' idle rate measured just before
(``BASELINE_S``). Other work on the host does not count, so the figure holds on
a shared machine. Changes: 1 -> 2 replicas of each stage (and back, untimed),
and a variant switch in the detector and the classifier.

Where that CPU runs matters as much as how much: every thread of the session is
sampled (``SAMPLE_S``) with its nice, and the CPU is split into what ran ahead
of the serving stages (nice below ``STAGE_NICE``: a new Ray worker process, the
Serve controller, the applier in the driver, Ray's raylet and GCS) and what ran
at their level (the new replica once its constructor lowered it: its model
load), with the split per process role. Then each replica start is repeated
under a closed-loop load (``CLIENTS`` clients, one request at a time each): the
median latency of the requests in the ``BASELINE_S`` before the change against
the requests that overlap it, and the change's own CPU meanwhile
(``change_cpu_under_load``).

The applier in the driver polls Serve until the changed replicas serve; each poll
costs it 40-50 ms of CPU at nice 0. ``--polls`` measures the applier's poll
schedules side by side, alternated repeat by repeat in one Ray session:
``growing`` (the product since 2026-12-07: ``pipelines.applier.poll_pauses``,
0.1 s growing by 1.5x to 0.5 s) and ``fixed`` (every 0.1 s, before).

    python benchmarks/replica_start_cpu.py [--repeats 3] [--pipeline vision-caption-ci|vision-caption]
                                            [--polls growing,fixed]

Prints and writes benchmarks/results/replica_start_cpu.json (vision-caption-ci) or
replica_start_cpu_flagship.json (vision-caption), or ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from varipipe.loadgen.questions import question_headers, questions_for  # noqa: E402
from varipipe.loadgen.replayer import load_image  # noqa: E402
from varipipe.pipelines import applier  # noqa: E402
from varipipe.pipelines.serve_config import STAGE_NICE, AppOptions  # noqa: E402
from varipipe.pipelines.server import LocalServer, serve_session  # noqa: E402
from varipipe.records import Decision, StageDecision  # noqa: E402

RESULTS = {"vision-caption-ci": Path(__file__).parent / "results" / "replica_start_cpu.json",
           "vision-caption": Path(__file__).parent / "results" / "replica_start_cpu_flagship.json"}
# Idle rate of the Ray processes, measured right before each change.
BASELINE_S = 5.0
# After the applier returns (replica RUNNING, model loaded): a replica's first
# health checks and the controller's bookkeeping still run for a moment.
SETTLE_S = 2.0
# Between changes, so one change's tail does not count in the next baseline.
GAP_S = 5.0
# Thread sampling period: 10 ms clock ticks, a few per sample for a busy thread.
SAMPLE_S = 0.05
# Closed-loop clients of the load phase: two keep a request in the LLM while another is in
# the detector or classifier, as a pipeline under load does.
CLIENTS = 2
# Per pipeline: the variants it starts with (detector, classifier, llm) and the ones each
# switch goes to; batch 1, one replica each, cpu:1.
VARIANTS = {
    "vision-caption-ci": {"base": ("yolov3-tiny-320", "mobilenet-v2", "smollm2-135m"),
                          "switch": ("yolov3-tiny-416", "efficientnet-lite0")},
    "vision-caption": {"base": ("yolov10n-320", "mobilenet-v2-160", "qwen2.5-coder-0.5b"),
                       "switch": ("yolov10n-416", "efficientnet-lite0")},
}


# --polls: the applier's POLL_GROWTH under each name (the applier runs in this process).
POLLS = {"growing": applier.POLL_GROWTH, "fixed": 1.0}


def decision(variants: tuple[str, str, str], replicas: dict | None = None) -> Decision:
    r = {"detector": 1, "classifier": 1, "llm": 1, **(replicas or {})}
    return Decision(stages=tuple(StageDecision(stage, v, 1, r[stage], "cpu:1")
                                 for stage, v in zip(("detector", "classifier", "llm"), variants, strict=True)))


def changes(pipeline: str) -> tuple[Decision, dict[str, tuple[Decision, Decision]]]:
    """The base decision, and kind -> (change, undo): 1 -> 2 replicas of each stage, a variant
    switch in the detector and in the classifier."""
    base_v = VARIANTS[pipeline]["base"]
    det, cls = VARIANTS[pipeline]["switch"]
    base = decision(base_v)
    return base, {
        "add:detector": (decision(base_v, {"detector": 2}), base),
        "add:classifier": (decision(base_v, {"classifier": 2}), base),
        "add:llm": (decision(base_v, {"llm": 2}), base),
        "switch:detector": (decision((det, *base_v[1:])), base),
        "switch:classifier": (decision((base_v[0], cls, base_v[2])), base),
    }


def session_roles() -> dict[int, str]:
    """This process and every descendant, by pid, each named by its role: Ray's process title
    (``ray::ServeReplica:APP:stage-llm``, ``ray::ServeController``, ``ray::IDLE``) with the
    application's name taken out, or the executable's name (raylet, gcs_server)."""
    me = psutil.Process(os.getpid())
    out = {me.pid: "driver"}
    for p in me.children(recursive=True):
        try:
            title = (p.cmdline() or [p.name()])[0]
        except psutil.Error:  # exited meanwhile
            continue
        if title.startswith("ray::ServeReplica:"):
            title = "ray::ServeReplica:" + title.rsplit(":", 1)[-1]
        out[p.pid] = title if title.startswith("ray::") else Path(title.split()[0]).name
    return out


def _thread_ticks(pid: int) -> dict[int, tuple[int, int]]:
    """(CPU clock ticks, nice) of each thread of ``pid``, from /proc/PID/task/TID/stat."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields after the command: rest[k] is field k + 3 of proc(5): utime 14, stime 15, nice 19.
        out[int(tid)] = (int(rest[11]) + int(rest[12]), int(rest[16]))
    return out


class NiceSampler:
    """CPU of every thread of the session, by the nice the thread had when it ran."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")
        # [ahead s, level s]: CPU at a nice below STAGE_NICE (ahead of the serving stages), and at
        # STAGE_NICE or more; by the role a process had when it ran, and by process.
        self.by_role: dict[str, list[float]] = {}
        self.by_pid: dict[int, list[float]] = {}
        self.seconds = 0.0  # wall time sampled
        self.roles: dict[int, str] = {}  # pid -> its role when last seen
        self.existing: set[int] = set()  # the pids running when sampling began
        self._last: dict[tuple[int, int], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, count: bool) -> None:
        for pid, role in session_roles().items():
            self.roles[pid] = role
            if not count:
                self.existing.add(pid)
            for tid, (ticks, nice) in _thread_ticks(pid).items():
                delta = ticks - self._last.get((pid, tid), 0)
                self._last[(pid, tid)] = ticks
                if count and delta > 0:
                    where = 0 if nice < STAGE_NICE else 1
                    self.by_role.setdefault(role, [0.0, 0.0])[where] += delta / self.hz
                    self.by_pid.setdefault(pid, [0.0, 0.0])[where] += delta / self.hz

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample(True)

    @property
    def ahead_s(self) -> float:
        return sum(a for a, _ in self.by_pid.values())

    @property
    def level_s(self) -> float:
        return sum(b for _, b in self.by_pid.values())

    def __enter__(self) -> NiceSampler:
        self._t0 = time.monotonic()
        self._sample(False)  # threads already running count from here
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(True)
        self.seconds = time.monotonic() - self._t0


def measure(srv: LocalServer, change: Decision, undo: Decision) -> dict:
    """The CPU a change burns above the session's idle rate, split by priority."""
    with NiceSampler() as idle:
        time.sleep(BASELINE_S)
    with NiceSampler() as s:
        res = srv.apply(change)
        time.sleep(SETTLE_S)
    srv.apply(undo)
    time.sleep(GAP_S)
    ahead_above = s.ahead_s - idle.ahead_s / idle.seconds * s.seconds
    level_above = s.level_s - idle.level_s / idle.seconds * s.seconds
    return {"apply_s": res.seconds, "window_s": s.seconds, "cpu_s": s.ahead_s + s.level_s,
            "idle_cpu_rate": (idle.ahead_s + idle.level_s) / idle.seconds,
            "cpu_s_above_idle": ahead_above + level_above,
            "ahead_cpu_s_above_idle": ahead_above, "level_cpu_s_above_idle": level_above,
            "cpu_s_by_role": {k: {"ahead": round(a, 3), "level": round(b, 3)} for k, (a, b) in sorted(s.by_role.items())}}


class Load:
    """``CLIENTS`` closed-loop clients; each request's (start, end, status) on the monotonic clock."""

    def __init__(self, url: str, pipeline: str) -> None:
        body, ctype = load_image("chelsea")
        self.url, self.body, self.ctype = url, body, ctype
        self.questions = questions_for(pipeline, "chelsea")
        self.done: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=120) as c:
            n = i
            while not self._stop.is_set():
                headers = {"content-type": self.ctype, **question_headers(self.questions, n)}
                t0 = time.monotonic()
                status = c.post(self.url, content=self.body, headers=headers).status_code
                self.done.append((t0, time.monotonic(), status))
                n += CLIENTS

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


# Processes whose CPU under load is the serving itself, which a change slows down: left out of
# the change's own CPU (``change_cpu_under_load``).
SERVING_ROLES = ("ray::ServeReplica:stage-", "ray::ServeReplica:ingress", "ray::ProxyActor")


def change_cpu_under_load(base: NiceSampler, window: NiceSampler) -> tuple[float, float]:
    """(ahead, level) CPU-seconds of the change itself under load: every process it started
    (the new replica, a worker Ray starts in its stead), and the other processes' CPU above their
    rate in the baseline (the applier in the driver, Serve's controller, raylet, GCS); the serving
    replicas, the ingress and the proxy are left out."""
    ahead = level = 0.0
    for pid, (a, b) in window.by_pid.items():
        if pid not in window.existing:
            ahead, level = ahead + a, level + b
        elif not window.roles[pid].startswith(SERVING_ROLES):
            a0, b0 = base.by_pid.get(pid, [0.0, 0.0])
            ahead += a - a0 / base.seconds * window.seconds
            level += b - b0 / base.seconds * window.seconds
    return ahead, level


def measure_under_load(srv: LocalServer, change: Decision, undo: Decision) -> dict:
    """Median latency of the requests before a change against those that overlap it, and the
    change's own CPU meanwhile."""
    with Load(srv.endpoint, srv.spec.name) as load:
        time.sleep(GAP_S)  # the clients' first requests settle
        t0 = time.monotonic()
        with NiceSampler() as base:
            time.sleep(BASELINE_S)
        t1 = time.monotonic()
        with NiceSampler() as window:
            res = srv.apply(change)
            time.sleep(SETTLE_S)
        t2 = time.monotonic()
    srv.apply(undo)
    time.sleep(GAP_S)
    ahead, level = change_cpu_under_load(base, window)
    before = [e - s for s, e, st in load.done if s >= t0 and e <= t1 and st == 200]
    during = [e - s for s, e, st in load.done if e > t1 and s < t2 and st == 200]
    failed = sum(st != 200 for s, e, st in load.done if e > t0)
    return {"apply_s": res.seconds, "before_n": len(before), "during_n": len(during), "failed": failed,
            "before_p50_s": statistics.median(before) if before else None,
            "during_p50_s": statistics.median(during) if during else None,
            "during_max_s": max(during) if during else None,
            "slowdown": statistics.median(during) / statistics.median(before) if before and during else None,
            "ahead_cpu_s": ahead, "level_cpu_s": level}


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pipeline", default="vision-caption-ci", choices=sorted(VARIANTS))
    ap.add_argument("--polls", default="growing", help=f"comma-separated, of {', '.join(POLLS)}")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/replica_start_cpu[_flagship].json")
    args = ap.parse_args()
    args.out = args.out or RESULTS[args.pipeline]
    polls = args.polls.split(",")
    base, kinds = changes(args.pipeline)
    runs = {p: {k: [] for k in kinds} for p in polls}
    loaded = {p: {k: [] for k in kinds if k.startswith("add:")} for p in polls}
    opts = AppOptions(pipeline=args.pipeline, app_name="bench-start-cpu")
    with serve_session() as port, LocalServer(opts, port=port, decision=base) as srv:
        time.sleep(GAP_S)
        for i in range(args.repeats):
            for poll in polls:  # alternated, so a drift of the host falls on each
                applier.POLL_GROWTH = POLLS[poll]
                for kind, (change, undo) in kinds.items():
                    r = measure(srv, change, undo)
                    runs[poll][kind].append(r)
                    print(f"[{i + 1}/{args.repeats}] {poll} {kind}: {r['cpu_s_above_idle']:.2f} CPU-s above idle, "
                          f"{r['ahead_cpu_s_above_idle']:.2f} of it ahead of the stages (apply {r['apply_s']:.2f} s)",
                          flush=True)
                for kind in loaded[poll]:
                    r = measure_under_load(srv, *kinds[kind])
                    loaded[poll][kind].append(r)
                    print(f"[{i + 1}/{args.repeats}] {poll} {kind} under load: p50 {r['before_p50_s']:.3f} s before, "
                          f"{r['during_p50_s']:.3f} s during ({r['during_n']} requests, {r['failed']} failed); the "
                          f"change's CPU {r['ahead_cpu_s']:.2f} s ahead, {r['level_cpu_s']:.2f} s at the stages' level",
                          flush=True)
    summary = {p: {k: {"median_cpu_s": _median(x["cpu_s_above_idle"] for x in v),
                       "median_ahead_cpu_s": _median(x["ahead_cpu_s_above_idle"] for x in v),
                       "median_level_cpu_s": _median(x["level_cpu_s_above_idle"] for x in v),
                       "median_apply_s": _median(x["apply_s"] for x in v),
                       **({"median_slowdown_under_load": _median(x["slowdown"] for x in loaded[p][k]),
                           "failed_under_load": sum(x["failed"] for x in loaded[p][k]),
                           "median_ahead_cpu_s_under_load": _median(x["ahead_cpu_s"] for x in loaded[p][k]),
                           "median_level_cpu_s_under_load": _median(x["level_cpu_s"] for x in loaded[p][k])}
                          if k in loaded[p] else {})}
                   for k, v in runs[p].items()} for p in polls}
    out = {"benchmark": "replica_start_cpu", "pipeline": args.pipeline,
           "command": "python benchmarks/replica_start_cpu.py " + " ".join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
           "stage_nice": STAGE_NICE, "clients": CLIENTS, "summary": summary, "runs": runs, "under_load": loaded}
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
