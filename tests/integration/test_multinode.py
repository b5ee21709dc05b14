"""A real two-node Ray cluster on this machine serves the CI pipeline (issue 8, part 2).

The head and a second node are ``ray start --block`` subprocesses, each in its own
process group, with their own ports and a temp dir of their own, separate from the
test session's Ray. ``varipipe serve --address`` joins that cluster from another
subprocess (this process is connected to the session's Ray, a different cluster).
Each node carries a custom resource and ``--stage-resources`` places the detector
on the head and the classifier and LLM on the second node, so the placement is
deterministic; the test then reads the GCS actor table to see where every replica
really runs, and sends requests over HTTP. Everything is killed even on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from varipipe.pipelines.server import free_port, free_ports
from varipipe.records import Decision, StageDecision

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = "vision-caption-ci"
APP = "varipipe"
# Node start is ~10 s here; Serve with three model-loading stages ~30-60 s on a busy 2-core CI box.
NODE_TIMEOUT_S = 120
SERVE_TIMEOUT_S = 300
CLIENT_SERVER_START_S = 120
# `ray start --block` shuts its children down on SIGTERM; past this, SIGKILL.
STOP_GRACE_S = 10
# The object store is not used by this pipeline's small payloads: 100 MB per node is plenty.
OBJECT_STORE_BYTES = 100_000_000
HEAD_RESOURCE, WORKER_RESOURCE = "vp_head_node", "vp_worker_node"
# The detector (2 replicas) on the head; classifier and LLM on the second node.
STAGE_RESOURCES = {"detector": {HEAD_RESOURCE: 0.01}, "classifier": {WORKER_RESOURCE: 0.01},
                   "llm": {WORKER_RESOURCE: 0.01}}
DECISION = Decision(stages=(StageDecision("detector", "yolov3-tiny-320", 1, 2, "cpu:1", 0.005),
                            StageDecision("classifier", "mobilenet-v2", 1, 1, "cpu:1", 0.005),
                            StageDecision("llm", "smollm2-135m", 1, 1, "cpu:1", 0.005)), policy="test")


def _env() -> dict[str, str]:
    # Without PYTHONUNBUFFERED, as in CI: `varipipe serve` must flush its "serving ... at" line itself.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONUNBUFFERED")}
    # A throwaway loopback cluster: no token auth (the session Ray's driver may have set it on).
    env["RAY_AUTH_MODE"] = "disabled"
    # The head's Ray Client proxy gives a new client's server 30 s to come up (proxier.py,
    # CHECK_CHANNEL_TIMEOUT_S); on a busy 2-core CI box that start alone can take longer.
    env["RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S"] = str(CLIENT_SERVER_START_S)
    return env


# The ports `ray start` would otherwise pick itself; fixed so two nodes on one machine never clash.
NODE_PORT_FLAGS = ("node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
                   "dashboard-agent-grpc-port", "runtime-env-agent-port")


class TwoNodeCluster:
    """A head and one more node, started with ``ray start`` in their own process groups."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # The head's ports, drawn together so that no two are the same (free_ports).
        self.port, client_port, *self._head_ports = free_ports(2 + len(NODE_PORT_FLAGS))
        self.address = f"127.0.0.1:{self.port}"
        self.client_address = f"ray://127.0.0.1:{client_port}"  # Ray Client server on the head
        self.procs: list[subprocess.Popen] = []

    def _start(self, name: str, cpus: int, resource: str, extra: list[str]) -> None:
        # The worker's are drawn once the head is up and holds its own.
        drawn = self._head_ports if name == "head" else free_ports(len(NODE_PORT_FLAGS))
        ports = dict(zip(NODE_PORT_FLAGS, drawn, strict=True))
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address=127.0.0.1",
               f"--num-cpus={cpus}", f"--resources={json.dumps({resource: 1})}", f"--temp-dir={self.root / 'ray'}",
               f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats",
               *(f"--{flag}={port}" for flag, port in ports.items()), *extra]
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def start(self) -> None:
        self._start("head", 2, HEAD_RESOURCE, ["--head", f"--port={self.port}", "--include-dashboard=false",
                                               f"--ray-client-server-port={self.client_address.rsplit(':', 1)[1]}"])
        self._wait_nodes(1)
        self._start("worker", 2, WORKER_RESOURCE, [f"--address={self.address}"])
        self._wait_nodes(2)

    def _wait_nodes(self, n: int) -> None:
        deadline = time.monotonic() + NODE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if len([x for x in self.query()["nodes"] if x["alive"]]) >= n:
                    return
            except (subprocess.SubprocessError, ValueError):
                pass
            time.sleep(1)
        logs = "".join((self.root / f).read_text(errors="replace")[-1500:] for f in ("head.log", "worker.log")
                       if (self.root / f).exists())
        raise AssertionError(f"{n} Ray node(s) not up within {NODE_TIMEOUT_S}s:\n{logs}")

    def query(self) -> dict:
        """Nodes and live actors, read from the GCS by a driver connected to this cluster."""
        script = textwrap.dedent(f"""
            import json, ray
            from ray._private.state import state
            ray.init(address={self.address!r}, logging_level="ERROR", log_to_driver=False)
            nodes = [{{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]}} for n in ray.nodes()]
            actors = [{{"cls": a["ActorClassName"], "node": a["Address"]["NodeID"], "pid": a.get("Pid")}}
                      for a in state.actor_table(None).values() if a["State"] == "ALIVE"]
            print(json.dumps({{"nodes": nodes, "actors": actors}}))
        """)
        out = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, timeout=60, check=True)
        return json.loads(out.stdout.decode().strip().splitlines()[-1])

    def stop(self) -> None:
        stop_process_groups(reversed(self.procs))
        kill_leftovers(str(self.root))


def stop_process_groups(procs) -> None:
    procs = list(procs)
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(p, signal.SIGKILL)  # children (gcs, raylet, workers) may outlive the leader
        p.wait()


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_leftovers(marker: str) -> None:
    """SIGKILL any process whose command line names our own temp dir (none should remain)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def cluster() -> Iterator[TwoNodeCluster]:
    # A short path: Ray's unix sockets live under it (108-byte limit on sun_path).
    root = Path(tempfile.mkdtemp(prefix="vpmn-"))
    c = TwoNodeCluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def start_serve(cluster: TwoNodeCluster, address: str, pipeline: str, name: str, *extra: str, port: int = 0):
    """``varipipe serve --address ADDRESS`` in its own process group; returns (process, URL, log path)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "varipipe.cli", "serve", "--address", address, "--pipeline", pipeline,
           "--policy", "none", "--state-file", str(cluster.root / f"{name}-state.json"), "--port", str(port), *extra]
    log = cluster.root / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log


@pytest.fixture(scope="module")
def served(cluster) -> Iterator[str]:
    """``varipipe serve --address`` joined to the two-node cluster; yields its base URL."""
    decision = cluster.root / "decision.json"
    decision.write_text(json.dumps(DECISION.to_dict()))
    proc, url = serve_healthy(cluster, cluster.address, PIPELINE, "serve", "--decision", str(decision),
                              "--stage-resources", json.dumps(STAGE_RESOURCES))
    try:
        yield url
    finally:
        stop_process_groups([proc])


def serve_healthy(cluster: TwoNodeCluster, address: str, pipeline: str, name: str, *extra: str, port: int = 0):
    """:func:`start_serve` until it serves; one retry when ``ray.init`` itself failed to connect.

    Seen here under load: Ray's client connect scanning host processes trips over a zombie
    (psutil.ZombieProcess) and the driver exits before it joins; a second start works.
    """
    for attempt in (1, 2):
        proc, url, log = start_serve(cluster, address, pipeline, f"{name}-{attempt}", *extra, port=port)
        try:
            _wait_healthy(url, proc, log, pipeline)
            return proc, url
        except AssertionError:
            stop_process_groups([proc])
            text = log.read_text(errors="replace")
            if attempt == 2 or "in start_ray" not in text:
                raise
    raise AssertionError("unreachable")


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, pipeline: str) -> None:
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"varipipe serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        # `varipipe serve` prints this once every stage runs the decision (the applier waited for it).
        if f"serving {pipeline} at" in log.read_text(errors="replace"):
            assert httpx.get(url + "/healthz", timeout=30).status_code == 200
            return
        time.sleep(1)
    raise AssertionError(f"not healthy within {SERVE_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def test_two_nodes_are_alive_with_their_resources(cluster):
    nodes = [n for n in cluster.query()["nodes"] if n["alive"]]
    assert len(nodes) == 2
    assert sorted(r for n in nodes for r in n["resources"] if r.startswith("vp_")) == [HEAD_RESOURCE,
                                                                                      WORKER_RESOURCE]


def test_replicas_land_on_both_nodes_and_requests_succeed(cluster, served, chelsea_jpeg):
    info = cluster.query()
    node_of = {n["id"]: next(r for r in n["resources"] if r.startswith("vp_")) for n in info["nodes"] if n["alive"]}
    placed: dict[str, list[str]] = {}
    for a in info["actors"]:
        if a["cls"].startswith(f"ServeReplica:{APP}:stage-"):
            placed.setdefault(a["cls"].rsplit("stage-", 1)[1], []).append(node_of[a["node"]])
    assert placed == {"detector": [HEAD_RESOURCE] * 2, "classifier": [WORKER_RESOURCE], "llm": [WORKER_RESOURCE]}

    def post(_):
        return httpx.post(f"{served}/{PIPELINE}", content=chelsea_jpeg, headers={"content-type": "image/jpeg"},
                          timeout=120)

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(post, range(8)))
    assert [r.status_code for r in replies] == [200] * 8, [r.text[:200] for r in replies if r.status_code != 200]
    for r in replies:
        body = r.json()
        assert [s["stage"] for s in body["stages"]] == ["detector", "classifier", "llm"] and body["answer"]
    # The replicas that answered report from processes on both nodes.
    reports = httpx.get(served + "/api/replicas").json()
    pids_by_node = {}
    for a in cluster.query()["actors"]:
        pids_by_node.setdefault(node_of.get(a["node"]), set()).add(a["pid"])
    nodes_reporting = {n for r in reports for n, pids in pids_by_node.items() if r["pid"] in pids}
    assert nodes_reporting == {HEAD_RESOURCE, WORKER_RESOURCE}


def test_serve_over_ray_client_address(cluster, served, png_bytes):
    """``--address ray://HEAD:PORT`` (Ray Client) serves too.

    Runs last: Serve already listens on the first app's port in this cluster (its HTTP
    options are fixed at its first start) and a declarative deploy replaces the
    cluster's applications, so this app takes the first one's place on the same port.
    """
    port = int(served.rsplit(":", 1)[1])
    proc, url = serve_healthy(cluster, cluster.client_address, "identity-chain", "serve-client", port=port)
    try:
        r = httpx.post(url + "/identity-chain", content=png_bytes, timeout=60)
        assert r.status_code == 200 and [s["stage"] for s in r.json()["stages"]] == ["first", "second"]
    finally:
        stop_process_groups([proc])
