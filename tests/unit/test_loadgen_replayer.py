"""Replayer pure parts: reply parsing, summaries, request bodies (no network)."""

from __future__ import annotations

import json

import pytest

from varipipe.errors import TraceError, VaripipeError
from varipipe.loadgen.replayer import (
    RequestRecord,
    _parse_reply,
    _summarise,
    load_image,
    read_records,
)


@pytest.mark.parametrize("body", [b"", b"not json", b"[1,2]", b'{"stages": 5}', b'{"stages": [7, {"x": 1}]}'])
def test_parse_reply_tolerates_missing_fields(body):
    assert _parse_reply(body) == ({}, {}, None)


def test_parse_reply_reads_variants_and_timings():
    body = json.dumps({"stages": [{"stage": "a", "variant": "v1", "seconds": 0.5, "output": {}},
                                  {"stage": "b", "variant": "v2"}], "latency_s": 0.7}).encode()
    assert _parse_reply(body) == ({"a": "v1", "b": "v2"}, {"a": 0.5}, 0.7)


def test_summary_flags_a_late_sender():
    on_time = [RequestRecord(i, i * 0.01, i * 0.01, 0.01, 200) for i in range(100)]
    s = _summarise(on_time, 100, 0.99)
    assert not s.saturated and s.achieved_rps == pytest.approx(s.intended_rps)
    late = [RequestRecord(i, i * 0.01, i * 0.02, 0.01, 200) for i in range(100)]
    s = _summarise(late, 100, 0.99)
    assert s.saturated and s.achieved_rps < 0.6 * s.intended_rps


def test_load_image_samples_and_errors(tmp_path):
    body, ctype = load_image("synthetic")
    assert body[:2] == b"\xff\xd8" and ctype == "image/jpeg"
    f = tmp_path / "x.png"
    f.write_bytes(b"\x89PNG")
    assert load_image(str(f)) == (b"\x89PNG", "image/png")
    with pytest.raises(VaripipeError, match="not a sample name"):
        load_image("no-such-thing")


def test_read_records_names_bad_line(tmp_path):
    f = tmp_path / "log.jsonl"
    f.write_text(RequestRecord(0, 0, 0, 0.1, 200).to_json() + "\n{oops\n")
    with pytest.raises(TraceError, match="log.jsonl:2"):
        read_records(f)
