"""varipipe.jsonfile: atomic JSON writes, gzip-compressed for a ``.gz`` path, read back either way."""

from __future__ import annotations

import gzip
import json

import pytest

from varipipe.jsonfile import read_json, write_json_atomic

DOC = {"records": [{"t": 0.5, "latency_s": 0.25}] * 50, "name": "run"}


def test_a_plain_path_is_plain_json_with_a_final_newline(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "doc.json", DOC, indent=1)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and json.loads(text) == DOC == read_json(path)
    assert [p.name for p in path.parent.iterdir()] == ["doc.json"]  # no temp file left beside it


def test_a_gz_path_is_compressed_reproducibly_and_reads_back(tmp_path):
    a = write_json_atomic(tmp_path / "a.json.gz", DOC)
    b = write_json_atomic(tmp_path / "b.json.gz", DOC)
    assert json.loads(gzip.decompress(a.read_bytes())) == DOC == read_json(a)
    assert a.read_bytes() == b.read_bytes()  # no time stamp in the gzip header: same data, same bytes
    assert a.stat().st_size < len(json.dumps(DOC)) / 5


def test_default_serialises_what_json_cannot(tmp_path):
    class Half:
        def __float__(self) -> float:
            return 0.5

    path = write_json_atomic(tmp_path / "x.json", {"v": Half()}, default=float)
    assert read_json(path) == {"v": 0.5}


def test_a_plain_file_named_gz_is_an_error_not_garbage(tmp_path):
    (tmp_path / "x.json.gz").write_text("{}")
    with pytest.raises(gzip.BadGzipFile):
        read_json(tmp_path / "x.json.gz")
