"""rag-qa and doc-ocr served over HTTP by real Ray Serve (their CI specs, real weights)."""

from __future__ import annotations

import io

import httpx
import pytest

from varipipe.pipelines.serve_config import AppOptions
from varipipe.pipelines.server import LocalServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TIMEOUT_S = 120.0  # first requests load the models on a busy 2-core host


def test_rag_qa_serves_text_and_rejects_bad_text(serve_port):
    with LocalServer(AppOptions(pipeline="rag-qa-ci", app_name="rag-http"), port=serve_port) as srv:
        q = "How do I check whether a year is a leap year?"
        for kwargs in ({"json": {"text": q}}, {"content": q.encode(), "headers": {"content-type": "text/plain"}}):
            r = httpx.post(srv.endpoint, timeout=TIMEOUT_S, **kwargs)
            assert r.status_code == 200, r.text
            stages = {s["stage"]: s for s in r.json()["stages"]}
            assert "calendar.isleap" in [p["id"] for p in stages["retriever"]["output"]["passages"]]
            assert stages["llm"]["output"]["text"].startswith("Use")
        for kwargs, status, words in (({"json": {"question": q}}, 400, '"text"'),
                                      ({"json": {"text": "  "}}, 400, "empty"),
                                      ({"content": b"\x89PNG", "headers": {"content-type": "image/png"}}, 415, "text")):
            r = httpx.post(srv.endpoint, timeout=TIMEOUT_S, **kwargs)
            assert r.status_code == status and words in r.json()["error"], r.text


def test_doc_ocr_reads_a_rendered_document(serve_port):
    from PIL import Image

    from varipipe.pipelines.variants.ocr_docs import DOCUMENTS, render

    buf = io.BytesIO()
    Image.fromarray(render("notice", DOCUMENTS["notice"]).image).save(buf, format="PNG")
    with LocalServer(AppOptions(pipeline="doc-ocr-ci", app_name="ocr-http"), port=serve_port) as srv:
        r = httpx.post(srv.endpoint, content=buf.getvalue(), headers={"content-type": "image/png"}, timeout=TIMEOUT_S)
    assert r.status_code == 200, r.text
    stages = {s["stage"]: s for s in r.json()["stages"]}
    assert "Library closed on Monday" in stages["rec"]["output"]["text"]
    assert stages["llm"]["output"]["text"].startswith("The document")
