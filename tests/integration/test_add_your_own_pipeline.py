"""The README's "Add your own pipeline" guide, step by step, on a pipeline from a folder of its own.

A two-stage text pipeline (normalise, count words) is written to a temporary
folder -- its variant module and its YAML -- and found through PYTHONPATH and
VARIPIPE_SPEC_PATH only: ``varipipe run``, ``varipipe profile --quick``,
``varipipe solve`` on that profile, and ``varipipe serve`` answering a text
request over HTTP with the adapter (ipa) running on that profile.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SERVE_START_S = 180.0  # Ray + Serve cold start on a busy 2-core host
CLI = [sys.executable, "-m", "varipipe.cli"]

VARIANT_MODULE = '"""A two-stage text pipeline of the \'Add your own pipeline\' guide: normalise text, then count its words."""\n\nfrom __future__ import annotations\n\nfrom collections.abc import Sequence\nfrom dataclasses import dataclass\nfrom typing import Any\n\n\n@dataclass(frozen=True)\nclass Text:\n    value: str\n\n    def to_json(self) -> dict[str, Any]:\n        return {"text": self.value}\n\n    def summary(self) -> str:\n        return self.value\n\n    def context(self) -> str:\n        return self.value\n\n\n@dataclass(frozen=True)\nclass WordCount:\n    words: int\n\n    def to_json(self) -> dict[str, Any]:\n        return {"words": self.words}\n\n    def summary(self) -> str:\n        return f"{self.words} words"\n\n\nclass _Base:\n    def __init__(self, spec, threads: int = 1, device: str = "cpu") -> None:\n        self.spec, self.threads = spec, threads\n\n    @property\n    def name(self) -> str:\n        return self.spec.name\n\n    @property\n    def hardware(self) -> str:\n        return f"cpu:{self.threads}"\n\n    def load(self) -> None:\n        pass\n\n    def unload(self) -> None:\n        pass\n\n\nclass Normalise(_Base):\n    def infer(self, batch: Sequence) -> list:\n        lower = bool(self.spec.params.get("lower", True))\n        return [Text(" ".join((p.text or "").split()).lower() if lower else (p.text or "")) for p in batch]\n\n\nclass Count(_Base):\n    def infer(self, batch: Sequence) -> list:\n        return [WordCount(len(p.outputs["normalise"].value.split())) for p in batch]\n\n\ndef make_normalise(spec, threads: int = 1, device: str = "cpu") -> Normalise:\n    return Normalise(spec, threads, device)\n\n\ndef make_count(spec, threads: int = 1, device: str = "cpu") -> Count:\n    return Count(spec, threads, device)\n'

SPEC_YAML = 'name: tiny-words\ndescription: Normalise a text, then count its words (the "Add your own pipeline" example).\ninput: text\nsla: {latency_s: 0.5}\nstages:\n  - name: normalise\n    num_cpus: 0.25\n    variants:\n      - name: lower\n        runtime: python\n        factory: tiny_variants:make_normalise\n        accuracy: {value: 0.99, kind: declared, source: "exact by construction (guide example)"}\n        params: {lower: true}\n      - name: asis\n        runtime: python\n        factory: tiny_variants:make_normalise\n        accuracy: {value: 0.9, kind: declared, source: "keeps case and spacing (guide example)"}\n        params: {lower: false}\n  - name: count\n    num_cpus: 0.25\n    variants:\n      - name: split\n        runtime: python\n        factory: tiny_variants:make_count\n        accuracy: {value: 0.99, kind: declared, source: "exact by construction (guide example)"}\n'


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("my-pipeline")
    (d / "tiny_variants.py").write_text(VARIANT_MODULE)
    (d / "tiny-words.yaml").write_text(SPEC_YAML)
    return d


@pytest.fixture(scope="module")
def env(folder) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(folder), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e["VARIPIPE_SPEC_PATH"] = str(folder)
    return e


def _cli(env, *args: str) -> str:
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_run_profile_solve_serve(folder, env):
    out = json.loads(_cli(env, "run", "--pipeline", "tiny-words", "--json", "Hello   Big World"))
    assert [s["output"] for s in out["stages"]] == [{"text": "hello big world"}, {"words": 3}]

    profile = folder / "tiny-words.json"
    _cli(env, "profile", "--pipeline", "tiny-words", "--quick", "--batch", "1,2", "--cores", "1",
         "--out", str(profile), "--no-progress")
    stored = json.loads(profile.read_text())
    assert {(p["stage"], p["variant"]) for p in stored["points"]} == {
        ("normalise", "lower"), ("normalise", "asis"), ("count", "split")}

    # As the README writes it: no --sla, so the spec's (0.5 s) applies.
    decision = json.loads(_cli(env, "solve", "--profiles", str(profile), "--rps", "5", "--json"))
    assert "normalise" in json.dumps(decision) and "count" in json.dumps(decision)
    assert decision["status"] == "optimal" and decision["predicted"]["latency_s"] <= 0.5

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*CLI, "serve", "--pipeline", "tiny-words", "--profiles", str(profile),
                               "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVE_START_S
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:] if server.stderr else ""
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "varipipe serve did not become healthy"
            time.sleep(1)
        r = httpx.post(f"{base}/tiny-words", json={"text": "Add Your Own  Pipeline"}, timeout=60)
        assert r.status_code == 200, r.text
        outputs = {s["stage"]: s["output"] for s in r.json()["stages"]}
        assert outputs["count"] == {"words": 4}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
