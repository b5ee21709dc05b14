"""What Ray Serve's controller makes of a handle's ongoing-request samples (issue 7 diagnostic).

One toy deployment (0.1 s per request) with autoscaling on and the ray check's
settings (look-back 30 s, target 2); a driver handle sends Poisson requests at
``--low-rps`` for ``--low-s`` seconds, then at ``--high-rps``. Every second it
records what the handle's metric store holds (per series: points and the first
point's time) and the figure the controller's autoscaler acts on (its test hook
``_get_total_num_requests_for_deployment_for_testing``). Reads Ray 2.60 private
attributes, so it may need updating with Ray. It showed that after an idle spell
the figure jumps to the first busy sample alone: Ray merges the series into their
change points from 0, so leading zeros drop out of the mean (what
``adapter/policies.py``'s ``_RayMetrics.mean`` now does).

    python benchmarks/ray_metrics_probe.py     # about 90 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICE_S = 0.1  # the toy deployment's time per request
# The ray check's autoscaling settings (benchmarks/fidelity.py), Ray's defaults otherwise.
AUTOSCALING = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2, "upscale_delay_s": 30,
               "downscale_delay_s": 30, "look_back_period_s": 30}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--low-rps", type=float, default=0.3)
    ap.add_argument("--low-s", type=float, default=50.0)
    ap.add_argument("--high-rps", type=float, default=4.0)
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray_metrics_probe.json"))
    args = ap.parse_args()

    import ray
    from ray import serve
    from ray.serve._private.common import DeploymentID
    from ray.serve.context import _get_global_client

    @serve.deployment(autoscaling_config=AUTOSCALING, ray_actor_options={"num_cpus": 0.1})
    class Toy:
        async def __call__(self, x: int) -> int:
            await asyncio.sleep(SERVICE_S)
            return x

    ray.init(num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    handle = serve.run(Toy.bind(), name="probe", route_prefix=None)
    controller = _get_global_client()._controller
    did = DeploymentID(name="Toy", app_name="probe")

    def store(t0: float) -> dict:
        router = getattr(handle._router, "_asyncio_router", handle._router)
        data = router._metrics_manager.metrics_store.data
        return {("queued" if str(k) == "queued" else "running"): {"points": len(v),
                "first_s": round(v[0].timestamp - t0, 2) if v else None, "values": [p.value for p in v]}
                for k, v in data.items()}

    async def drive() -> list[dict]:
        rng = random.Random(args.seed)
        t0 = time.time()
        pending: set = set()
        next_send, last, rows = 0.0, -1, []
        while (now := time.time() - t0) < args.seconds:
            if now >= next_send:
                pending.add(asyncio.ensure_future(handle.remote(1)))
                next_send = now + rng.expovariate(args.low_rps if now < args.low_s else args.high_rps)
            if int(now) != last:
                last = int(now)
                figure = ray.get(controller._get_total_num_requests_for_deployment_for_testing.remote(did))
                rows.append({"t_s": last, "controller_figure": figure, "handle_store": store(t0)})
                print(f"{last:3d}s figure {figure:6.2f}  "
                      + "  ".join(f"{k}: {v['values']}" for k, v in rows[-1]["handle_store"].items()), flush=True)
            pending = {p for p in pending if not p.done()}
            await asyncio.sleep(0.02)
        return rows

    try:
        rows = asyncio.run(drive())
    finally:
        serve.shutdown()
        ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"ray_version": ray.__version__, "service_s": SERVICE_S,
                                          "autoscaling": AUTOSCALING, "low_rps": args.low_rps,
                                          "low_s": args.low_s, "high_rps": args.high_rps, "rows": rows,
                                          "command": "python benchmarks/ray_metrics_probe.py "
                                                     + " ".join(sys.argv[1:])}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
