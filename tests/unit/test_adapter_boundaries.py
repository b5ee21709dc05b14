"""The adapter's import rules (DESIGN §4): no Ray, no pipelines, no loadgen; torch only for the LSTM."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ADAPTER = Path(__file__).resolve().parents[2] / "adapter"
FORBIDDEN = re.compile(r"^\s*(from|import)\s+(ray\b|varipipe\.pipelines|varipipe\.loadgen)", re.MULTILINE)


def test_adapter_never_imports_ray_pipelines_or_loadgen():
    offenders = [p.name for p in ADAPTER.rglob("*.py") if FORBIDDEN.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_torch_is_imported_only_when_the_lstm_is_built():
    code = ("import sys, varipipe.adapter.policies, varipipe.adapter.loop, varipipe.adapter.predictors as p;"
            "p.make_predictor('reactive'); print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
