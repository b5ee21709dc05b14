"""The LSTM load predictor (IPA's design, in PyTorch).

Input: the last 10 minutes of per-second rates aggregated as IPA's forecaster
did, to per-minute peaks (10 values); output: the peak rate of the next 20 s.
One LSTM layer of 25 units and a linear head, on rates divided by a fixed scale.
Weights are trained by ``train_lstm.py`` on days 0–11 of the Twitter trace and
shipped in ``varipipe.adapter/weights``; torch is imported only in this module.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from varipipe.errors import ModelUnavailableError

__all__ = ["HISTORY_S", "BUCKET_S", "HORIZON_S", "HIDDEN", "aggregate", "build_model", "LSTMPredictor",
           "WEIGHTS_FILE", "META_FILE"]

HISTORY_S = 600  # IPA: the last 10 minutes of load
BUCKET_S = 60  # IPA's forecaster took per-minute peaks of that window
HORIZON_S = 20  # IPA: predict the peak of the next 20 s
HIDDEN = 25  # IPA: 25 LSTM units
WEIGHTS_FILE = "lstm.pt"
META_FILE = "lstm.json"


def aggregate(history_rps: Sequence[float]) -> list[float]:
    """Per-bucket peaks of the last ``HISTORY_S`` seconds, left-padded with the first value."""
    tail = list(history_rps[-HISTORY_S:]) if len(history_rps) else [0.0]
    if len(tail) < HISTORY_S:
        tail = [tail[0]] * (HISTORY_S - len(tail)) + tail
    return [max(tail[i:i + BUCKET_S]) for i in range(0, HISTORY_S, BUCKET_S)]


def build_model():
    """The network: LSTM(1 → 25) then Linear(25 → 1) on the last hidden state."""
    import torch
    from torch import nn

    class _Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(input_size=1, hidden_size=HIDDEN, batch_first=True)
            self.head = nn.Linear(HIDDEN, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, steps, 1)
            out, _ = self.lstm(x)
            return self.head(out[:, -1, :]).squeeze(-1)

    return _Net()


@dataclass
class LSTMPredictor:
    """Predicts the next ``HORIZON_S`` seconds' peak rate from per-second history."""

    model: Any
    scale: float  # rates are divided by this before the network (from training data)
    meta: dict
    name: str = "lstm"

    @classmethod
    def load(cls, weights_dir: str | Path | None = None) -> LSTMPredictor:
        """Load the shipped weights, or those in ``weights_dir`` (written by train_lstm)."""
        import torch

        root = resources.files("varipipe.adapter") / "weights" if weights_dir is None else Path(weights_dir)
        try:
            with (root / WEIGHTS_FILE).open("rb") as f:
                state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
            info = json.loads((root / META_FILE).read_text(encoding="utf-8"))
        except OSError as e:
            raise ModelUnavailableError(
                f"LSTM weights not found in {root} ({e}); train them with `python -m varipipe.adapter.train_lstm`"
            ) from e
        model = build_model()
        model.load_state_dict(state)
        model.eval()
        return cls(model=model, scale=float(info["scale"]), meta=info)

    def predict(self, history_rps: Sequence[float]) -> float:
        import torch

        x = torch.tensor([v / self.scale for v in aggregate(history_rps)], dtype=torch.float32)
        with torch.no_grad():
            y = float(self.model(x.view(1, -1, 1)).item())
        return max(0.0, y * self.scale)
