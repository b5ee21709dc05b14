"""Train the LSTM load predictor on days 0–11 of a per-second trace.

    python -m varipipe.adapter.train_lstm --trace loadgen/trace_data/twitter-train.txt.gz --out adapter/weights

(from the repository root: the trace ships with the package, loadgen/trace_data/README.md)

Only seconds [0, TRAIN_END_S) are read for training and validation (the last
training day is the validation split, used for early stopping); days 12–13 are
the project's evaluation set (DESIGN §8) and are never touched here. Samples:
every ``STRIDE_S`` seconds, input = per-minute peaks of the previous 10 minutes,
target = the peak of the next 20 s, both divided by the training maximum.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

from varipipe.adapter.lstm import (
    BUCKET_S,
    HIDDEN,
    HISTORY_S,
    HORIZON_S,
    META_FILE,
    WEIGHTS_FILE,
    build_model,
)

TRAIN_END_S = 1_036_800  # 12 days x 86,400 s: days 12-13 are the evaluation set
VALIDATION_S = 86_400  # the last training day (day 11) is the early-stopping split
STRIDE_S = 10  # one sample per control interval
BATCH = 256
LEARNING_RATE = 3e-3
SEED = 0


def read_rates(path: Path) -> np.ndarray:
    """Per-second rates from a whitespace-separated text file (optionally gzip'd)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return np.array(raw.split(), dtype=np.float64)


def windows(rates: np.ndarray, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (n, 10) and targets (n,) for sample times t in [start+600, end−20], stride 10."""
    times = np.arange(max(start + HISTORY_S, HISTORY_S), end - HORIZON_S + 1, STRIDE_S)
    x = np.stack([rates[t - HISTORY_S:t].reshape(-1, BUCKET_S).max(axis=1) for t in times])
    y = np.array([rates[t:t + HORIZON_S].max() for t in times])
    return x, y


def train(rates: np.ndarray, epochs: int, out: Path) -> dict:
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    rates = rates[:TRAIN_END_S]
    scale = float(rates.max())
    split = TRAIN_END_S - VALIDATION_S
    xt, yt = (torch.tensor(a / scale, dtype=torch.float32) for a in windows(rates, 0, split))
    xv, yv = (torch.tensor(a / scale, dtype=torch.float32) for a in windows(rates, split - HISTORY_S, TRAIN_END_S))
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    best, best_state = float("inf"), None
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), BATCH):
            idx = perm[i:i + BATCH]
            loss = torch.nn.functional.mse_loss(model(xt[idx].unsqueeze(-1)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(xv.unsqueeze(-1))
            seen = yv > 0  # trace gaps (0 rps) have no percentage error
            val = float(torch.mean(torch.abs(pred[seen] - yv[seen]) / yv[seen]))
        print(f"epoch {epoch}: validation MAPE (day 11) {val:.4f}", file=sys.stderr)
        if val < best:
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(best_state, out / WEIGHTS_FILE)
    meta = {"scale": scale, "history_s": HISTORY_S, "bucket_s": BUCKET_S, "horizon_s": HORIZON_S,
            "hidden": HIDDEN, "train_seconds": [0, TRAIN_END_S], "validation_seconds": [split, TRAIN_END_S],
            "stride_s": STRIDE_S, "epochs": epochs, "validation_mape": best, "seed": SEED,
            "command": "python -m varipipe.adapter.train_lstm --trace loadgen/trace_data/twitter-train.txt.gz "
                       "--out adapter/weights"
                       f" --epochs {epochs}"}
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", required=True, type=Path,
                   help="per-second rates (IPA text format, optionally gzip'd), e.g. loadgen/trace_data/twitter-train.txt.gz")
    p.add_argument("--out", required=True, type=Path, help="folder for lstm.pt and lstm.json")
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args(argv)
    rates = read_rates(args.trace)
    if len(rates) < TRAIN_END_S:
        print(f"{args.trace}: holds {len(rates)} s, training needs the first {TRAIN_END_S}", file=sys.stderr)
        return 2
    print(json.dumps(train(rates, args.epochs, args.out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
