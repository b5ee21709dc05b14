"""Load predictors on the evaluation days (12–13) of the Twitter trace.

    python benchmarks/predictors.py --trace twitter

Every 10 s (one control interval) of seconds 1,036,800..1,209,599 each
predictor sees the per-second history up to that second and predicts the peak
rate of the next 20 s (IPA's horizon); we report the mean absolute percentage
error over intervals whose true peak is above zero (the trace has gaps at 0 rps)
and the fraction of intervals it under-predicts (the ones that violate SLAs).
The named baseline is ``reactive``. No predictor was trained or tuned on these
days (the LSTM saw days 0–11 only). Writes benchmarks/results/predictors.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from varipipe.adapter.lstm import HORIZON_S
from varipipe.adapter.predictors import PREDICTORS, make_predictor
from varipipe.loadgen.traces import read_trace

RESULTS = Path(__file__).resolve().parent / "results" / "predictors.json"
EVAL_START_S = 1_036_800  # day 12 (DESIGN §8)
EVAL_END_S = 1_209_600  # end of day 13
STRIDE_S = 10  # one prediction per control interval
HISTORY_KEEP_S = 3600  # the longest history any predictor reads is 10 min; an hour is plenty
BASELINE = "reactive"


def evaluate(name: str, rates: np.ndarray) -> dict:
    predictor = make_predictor(name)
    times = range(EVAL_START_S, EVAL_END_S - HORIZON_S + 1, STRIDE_S)
    started = time.perf_counter()
    pred = np.array([predictor.predict(rates[t - HISTORY_KEEP_S:t]) for t in times])
    took = time.perf_counter() - started
    true = np.array([rates[t:t + HORIZON_S].max() for t in times])
    seen = true > 0
    return {
        "predictor": name,
        "intervals": int(len(true)),
        "intervals_scored": int(seen.sum()),
        "mape": float(np.mean(np.abs(pred[seen] - true[seen]) / true[seen])),
        "under_predicted_fraction": float(np.mean(pred[seen] < true[seen])),
        "mean_over_provision_rps": float(np.mean(np.maximum(pred - true, 0.0)[seen])),
        "predict_time_ms": took / len(true) * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="predictor error on the evaluation days")
    p.add_argument("--trace", required=True,
                   help="per-second trace holding at least 14 days, or a packaged trace's name (twitter)")
    args = p.parse_args(argv)
    rates = read_trace(args.trace).rates
    if len(rates) < EVAL_END_S:
        print(f"{args.trace}: holds {len(rates)} s; the evaluation needs {EVAL_END_S}")
        return 2
    rows = [evaluate(name, rates) for name in PREDICTORS]
    base = next(r for r in rows if r["predictor"] == BASELINE)
    for r in rows:
        r["mape_vs_baseline"] = r["mape"] / base["mape"]
    result = {"benchmark": "predictors", "baseline": BASELINE,
              "command": "python benchmarks/predictors.py --trace twitter",
              "evaluation_seconds": [EVAL_START_S, EVAL_END_S], "horizon_s": HORIZON_S, "stride_s": STRIDE_S,
              "results": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"days 12-13, peak of the next {HORIZON_S} s every {STRIDE_S} s (baseline: {BASELINE})")
    for r in rows:
        print(f"  {r['predictor']:<11} MAPE {r['mape'] * 100:6.2f} %  under-predicted {r['under_predicted_fraction'] * 100:5.1f} %"
              f"  over-provision {r['mean_over_provision_rps']:5.1f} rps  ({r['predict_time_ms']:.2f} ms/prediction)")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
