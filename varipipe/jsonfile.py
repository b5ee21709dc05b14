"""Write and read JSON files: the one way varipipe saves state and results files.

Writing goes to a temp file beside the target, then a rename, so a reader (or a run interrupted
half-way) never sees half a file. A path ending in ``.gz`` is gzip-compressed both ways: the raw
records of the live benchmark runs are kept that way, about 10x smaller, so the repository stays
small enough to travel to the GPU host (tests/integration/test_gpu_profile_dry_run.py). Pure I/O,
no varipipe imports: every layer may use it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

__all__ = ["read_json", "write_json_atomic"]

GZIP_SUFFIX = ".gz"


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = None, default: Any = None) -> Path:
    """Write ``data`` as JSON (plus a final newline) to ``path``, creating its folder; gzip-compressed
    when ``path`` ends in ``.gz`` (with no time stamp, so the same data gives the same bytes).
    ``default`` is ``json.dumps``'s. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    raw = (json.dumps(data, indent=indent, default=default) + "\n").encode("utf-8")
    tmp.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == GZIP_SUFFIX else raw)
    tmp.replace(path)
    return path


def read_json(path: str | Path) -> Any:
    """The JSON document in ``path``, gunzipped first when ``path`` ends in ``.gz``."""
    path = Path(path)
    raw = path.read_bytes()
    return json.loads(gzip.decompress(raw) if path.suffix == GZIP_SUFFIX else raw)
