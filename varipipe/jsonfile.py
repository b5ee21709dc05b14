"""Write a JSON file atomically: the one way varipipe saves state and results files.

A temp file beside the target, then a rename, so a reader (or a run interrupted half-way)
never sees half a file. Pure I/O, no varipipe imports: every layer may use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomic"]


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = None) -> Path:
    """Write ``data`` as JSON (plus a final newline) to ``path``, creating its folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
