"""A self-contained HTML report of a finished experiment: ``DIR/report.html``.

Reads what the experiment runner wrote into ``DIR`` (``results.json``,
``series/<sla>/<policy>.json`` and the PNG figures) and writes one page with its
data, scripts, styles and images inline, so it opens offline, from a file, with
no server. The charts are the live dashboard's: its static files (package data of
``varipipe.pipelines.dashboard``) are read as files, so loadgen still imports
nothing of ``varipipe.pipelines`` (DESIGN §4).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from varipipe.errors import VaripipeError

__all__ = ["REPORT_NAME", "report_data", "render_report", "write_report", "dashboard_dir", "embed_json"]

REPORT_NAME = "report.html"
# Figures larger than this are left out of the page (and named in a note): a report
# should stay small enough to mail. The runner's PNGs are ~50-150 KB each.
MAX_FIGURE_BYTES = 5_000_000


def _finite(v: Any) -> Any:
    """NaN/inf -> None, recursively (the runner's series may hold NaN; JSON in HTML may not)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _series_file(out: Path, sla: str, policy: str) -> Path:
    return out / "series" / sla / f"{policy.replace(':', '_')}.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VaripipeError(f"{path}: cannot read the experiment's JSON ({e})") from e


def _figures(out: Path, slas: list[str], notes: list[str]) -> list[dict[str, str]]:
    """The runner's PNGs for these SLAs (``loadgen.report.plot_all`` names), summary first."""
    figs = []
    for name in ("summary.png", "load.png", *(f"over_time_{s}.png" for s in slas)):
        p = out / name
        if not p.exists():
            continue
        if p.stat().st_size > MAX_FIGURE_BYTES:
            notes.append(f"{p.name} left out: {p.stat().st_size} bytes > {MAX_FIGURE_BYTES}")
            continue
        figs.append({"name": p.name, "src": "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()})
    return figs


def report_data(out_dir: str | Path) -> dict[str, Any]:
    """Everything the page draws, from an experiment's output folder (NaN already as None)."""
    out = Path(out_dir)
    doc = _read_json(out / "results.json")
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise VaripipeError(f"{out / 'results.json'}: expected {{'meta': ..., 'results': [...]}}")
    notes: list[str] = []
    series: dict[str, dict[str, Any]] = {}
    timelines: dict[str, dict[str, Any]] = {}
    for row in doc["results"]:
        path = _series_file(out, row["sla"], row["policy"])
        if path.exists():
            series.setdefault(row["sla"], {})[row["policy"]] = _read_json(path)
        else:
            notes.append(f"no series for {row['sla']}/{row['policy']} ({path.relative_to(out)} is missing)")
        if path.with_suffix(".timeline.json").exists():  # configuration changes, when the runner kept them
            timelines.setdefault(row["sla"], {})[row["policy"]] = _read_json(path.with_suffix(".timeline.json"))
    meta = doc.get("meta", {})
    title = f"varipipe experiment: {', '.join(dict.fromkeys(r['policy'] for r in doc['results']))}"
    return _finite({"title": title, "meta": meta, "results": doc["results"], "series": series, "timelines": timelines,
                    "figures": _figures(out, list(dict.fromkeys(r["sla"] for r in doc["results"])), notes), "notes": notes})


def dashboard_dir() -> Path:
    """Where the dashboard's static files are; finds ``varipipe.pipelines`` without running it."""
    spec = importlib.util.find_spec("varipipe.pipelines")
    if spec is None or not spec.submodule_search_locations:
        raise VaripipeError("varipipe.pipelines is not installed: the report's charts ship with it")
    return Path(next(iter(spec.submodule_search_locations))) / "dashboard"


def embed_json(data: Any) -> str:
    """JSON safe inside an HTML ``<script>`` element (no ``</script>``, no ``<!--``)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_report(data: dict[str, Any]) -> str:
    """The page: the report template with the dashboard's CSS, chart code and ``data`` inline."""
    d = dashboard_dir()
    read = lambda name: (d / name).read_text(encoding="utf-8")  # noqa: E731
    scripts = "\n".join([f"window.VP_DATA = {embed_json(data)};", read("charts.js"), read("report.js")])
    title = data["title"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    page = read("report.html").replace("{{STYLE}}", read("dashboard.css")).replace("{{TITLE}}", title)
    return page.replace("{{SCRIPTS}}", scripts)


def write_report(out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` from the runner's files there; return its path."""
    path = Path(out_dir) / REPORT_NAME
    path.write_text(render_report(report_data(out_dir)), encoding="utf-8")
    return path
