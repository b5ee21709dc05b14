"""``ipa`` steering rag-qa and doc-ocr live (issue 10): their CI specs on real Ray Serve.

The loop runs in the controller replica on the pipeline's shipped profile (only
the points of the CI spec's variants, renamed to it); the test sends an open-loop
load and reads ``GET /config``. No decision is injected: the loop has to choose a
configuration other than the spec's defaults, apply it, and the replies must then
come from the variants it chose, with no failed request.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import pytest

from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer
from varipipe.spec import find_spec

from .openloop import open_loop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILES = Path(__file__).resolve().parents[2] / "profiler" / "profiles"
INTERVAL_S = 3.0
RATE_RPS = 0.25  # well inside what both pipelines serve on 2 cores (their profiles: ~1 req/s)
SECONDS = 40
TIMEOUT_S = 120.0  # first requests load the models on a busy 2-core host


def ci_profile(full: str, ci: str, tmp_path: Path) -> Path:
    """The full pipeline's shipped profile, restricted to the CI spec's variants."""
    spec = find_spec(ci)
    keep = {(s.name, v.name) for s in spec.stages for v in s.variants}
    doc = json.loads((PROFILES / f"{full}.json").read_text())
    doc["pipeline"] = ci
    doc["points"] = [p for p in doc["points"] if (p["stage"], p["variant"]) in keep]
    path = tmp_path / f"{ci}.json"
    path.write_text(json.dumps(doc))
    return path


def run_adapted(ci: str, profile: Path, body: bytes, content_type: str, port: int):
    opts = AppOptions(pipeline=ci, app_name=f"{ci}-ipa", policy="ipa", interval_s=INTERVAL_S, profile=str(profile),
                      cluster_cores=2.0)
    with LocalServer(opts, port=port) as srv:
        results = asyncio.run(open_loop(srv.endpoint, body, RATE_RPS, SECONDS, timeout_s=TIMEOUT_S,
                                        content_type=content_type))
        config = httpx.get(srv.url + "/config", timeout=30).json()
    return results, config


def check_adapted(ci: str, results, config) -> None:
    failed = [r for r in results if r.status != 200]
    assert not failed, f"{len(failed)} failed: {failed[:3]}"
    assert config["adapter"]["enabled"] and not config["adapter"]["last_error"], config["adapter"]
    applied = [e["decision"] for e in config["adapter"]["log"] if e["action"] == "applied"]
    defaults = {s.name: s.default_variant for s in find_spec(ci).stages}
    chosen = [{s["stage"]: s["variant"] for s in d["stages"]} for d in applied]
    assert any(c != defaults for c in chosen), f"the loop never left the defaults {defaults}: {chosen}"
    final = {s["stage"]: s["variant"] for s in config["decision"]["stages"]}
    last = [{s["stage"]: s["variant"] for s in r.body["stages"]} for r in results[-3:]]
    assert all(v == final for v in last), (final, last)  # the last replies came from the loop's choice


def test_ipa_adapts_rag_qa_live(serve_port, tmp_path):
    profile = ci_profile("rag-qa", "rag-qa-ci", tmp_path)
    body = json.dumps({"text": "How do I check whether a year is a leap year?"}).encode()
    results, config = run_adapted("rag-qa-ci", profile, body, "application/json", serve_port)
    check_adapted("rag-qa-ci", results, config)


def test_ipa_adapts_doc_ocr_live(serve_port, tmp_path):
    from PIL import Image

    from varipipe.pipelines.variants.ocr_docs import DOCUMENTS, render

    buf = io.BytesIO()
    Image.fromarray(render("notice", DOCUMENTS["notice"]).image).save(buf, format="PNG")
    profile = ci_profile("doc-ocr", "doc-ocr-ci", tmp_path)
    results, config = run_adapted("doc-ocr-ci", profile, buf.getvalue(), "image/png", serve_port)
    check_adapted("doc-ocr-ci", results, config)
