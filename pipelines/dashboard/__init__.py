"""The live adaptation dashboard and the experiment report page: static assets, inlined.

``GET /dashboard`` answers :func:`dashboard_html`: one HTML page with its CSS and
JavaScript inlined (no further requests but the JSON it polls, so it works under
any route prefix). The same chart code and styles draw the offline experiment
report (``varipipe.loadgen.report_html``, which reads these files as files).
Nothing here imports Ray or the serving code.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources

__all__ = ["ASSETS", "asset", "render_page", "dashboard_html"]

# Files shipped as package data (pyproject [tool.setuptools.package-data]).
ASSETS = ("index.html", "report.html", "charts.js", "dashboard.js", "report.js", "dashboard.css")


def asset(name: str) -> str:
    """The text of one shipped asset (``ValueError`` for a name not in ASSETS)."""
    if name not in ASSETS:
        raise ValueError(f"unknown dashboard asset {name!r}; known: {', '.join(ASSETS)}")
    return (resources.files(__name__) / name).read_text(encoding="utf-8")


def render_page(template: str, scripts: Sequence[str]) -> str:
    """Fill an HTML template with the shared CSS and the given scripts, inline."""
    code = [asset(s) for s in scripts]
    for name, text in zip(scripts, code, strict=True):
        if "</script" in text.lower():
            raise ValueError(f"{name} contains '</script', which would end the inline script early")
    page = asset(template).replace("{{STYLE}}", asset("dashboard.css"))
    return page.replace("{{SCRIPTS}}", "\n".join(code))


@functools.cache
def dashboard_html() -> str:
    """The live dashboard page (built once per process)."""
    return render_page("index.html", ("charts.js", "dashboard.js"))
