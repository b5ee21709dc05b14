"""Queueing delay a stage's requests wait before their batch starts (the optimizer's model).

A configuration's latency was its batch's p99 plus the batch-formation wait; the
time a formed batch waits for a free replica was left out, as if the capacity
headroom (``rho_max``) made it negligible. It does not at a tight SLA: on the
binding twitter evaluation's dev window (days 10-11), ``ipa`` ran one
``yolov10n-416`` replica (34 ms a request) at 15-20 req/s, and its requests
waited up to 60 ms behind each other where the SLA is 97 ms; 1.6 % missed.

The model here, per configuration (pure numpy, vectorised over a stage's rows):

* each of the ``n`` replicas takes an equal share of the stage's load and serves
  it as an M/G/1 queue of batches (Poisson arrivals of full batches of ``b``: for
  ``b > 1`` real batch arrivals are more regular, so this errs long). One queue per
  replica, not one shared queue: Serve's router sends a request to one replica,
  and a shared queue (the simulator's default, ``routing="central"``) only waits less;
* a batch's service time has the profile's mean and a variability fitted to its
  p99 (a lognormal through mean and p99, stood in for by the gamma of the same
  coefficient of variation, whose exponential moments exist);
* the waiting time's tail is the Cramér-Lundberg one, ``P(W > t) ≈ C·e^(−θt)``,
  with ``θ`` the positive root of ``r·(E[e^(θS)] − 1) = θ`` (``r`` batches/s a
  replica receives, ``ρ = r·E[S]``) and ``C = (1 − ρ)/(r·E[S·e^(θS)] − 1)``. Exact
  for M/M/1 (``C = ρ``). Checked against a Lindley recursion with the profile's
  lognormal service times (tests/unit/test_adapter_queueing.py): the p99 within
  1 ms of 200,000 simulated requests from ρ = 0.03 to 0.69 for the detector and
  classifier variants of vision-caption, where the earlier prefactor ``ρ`` was up to
  10 ms short at light load.

The quantile at the SLA's percentile ``p`` is ``max(0, ln(C/(1 − p))/θ)``, and zero
while no more than ``1 − p`` of requests wait at all (``ρ ≤ 1 − p``).
"""

from __future__ import annotations

import numpy as np

from varipipe.adapter.latency_model import Z99 as Z_P99

__all__ = ["wait_quantile_s", "latency_cv2", "SATURATED_WAIT_S", "Z_P99"]  # Z_P99: the profile's p99 is the 99th percentile

# What a replica at or past saturation (rho >= 1) is priced to wait: its queue grows without
# bound. Finite because solvers need finite coefficients; such a row is never within the
# capacity limits (``Limits.rho_max <= 1`` and the carried check), so it is never chosen.
SATURATED_WAIT_S = 1e6
# Theta (in units of 1/E[S]): bisection steps to narrow its bracket (at most 60 wide) to 60/2**12,
# and on while a row's top is still the gamma's pole (a root within the bracket's width of it),
# up to _ROOT_STEPS in all; then Newton steps from the bracket's top, which stop when a step
# moves it by less than _ROOT_TOLERANCE of itself (a few ulps; 3-6 steps). Bisection alone
# took 60 steps.
_ROOT_STEPS = 60
_BISECT_STEPS = 12
_NEWTON_STEPS = 30
_ROOT_TOLERANCE = 1e-15
# Root bracket for deterministic service (cv2 = 0): rho(e^x - 1) = x has its root below 7 for
# any rho > 0.01, the smallest utilisation whose quantile is not zero at p = 99.
_X_MAX = 60.0
# Below this coefficient of variation, the service is treated as constant (e^(x) - 1).
_CV2_CONSTANT = 1e-9


def latency_cv2(mean_s: np.ndarray, p99_s: np.ndarray) -> np.ndarray:
    """Squared coefficient of variation of a batch's service time from its mean and p99, through
    the lognormal with both: ``ln(p99/mean) = z·σ − σ²/2``, ``cv² = e^(σ²) − 1``. A p99 at or
    below the mean gives 0; one beyond what a lognormal allows (``ln ratio > z²/2``) gives σ = z."""
    mean = np.asarray(mean_s, dtype=float)
    ratio = np.log(np.divide(p99_s, mean, out=np.ones_like(mean), where=mean > 0))
    ratio = np.clip(ratio, 0.0, Z_P99 ** 2 / 2)
    sigma = Z_P99 - np.sqrt(Z_P99 ** 2 - 2 * ratio)
    return np.expm1(sigma ** 2)


def _mgf(x: np.ndarray, c: np.ndarray, const: np.ndarray, any_const: bool) -> np.ndarray:
    """``E[e^(xS)] − 1`` for gamma service of mean 1 and squared coefficient of variation ``c``
    (``const``: constant service, ``e^x − 1``); infinite past the gamma's pole."""
    mgf = np.expm1(-np.log1p(-np.minimum(x * c, 1.0)) / c)
    if any_const:
        mgf = np.where(const, np.expm1(np.minimum(x, 700.0)), mgf)
    mgf[np.isnan(mgf)] = np.inf
    return mgf


def _mgf_slope(x: np.ndarray, c: np.ndarray, const: np.ndarray, any_const: bool) -> np.ndarray:
    """``E[S·e^(xS)]``, the slope of :func:`_mgf` (``e^x`` for constant service)."""
    slope = (1.0 - np.minimum(x * c, 1.0)) ** (-1.0 / c - 1.0)
    if any_const:
        slope = np.where(const, np.exp(np.minimum(x, 700.0)), slope)
    return slope


def _shape(cv2: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(c, const, any const) for :func:`_mgf`: rows below _CV2_CONSTANT are constant service."""
    const = cv2 < _CV2_CONSTANT
    return np.where(const, 1.0, cv2), const, bool(const.any())


def _prefactor(x: np.ndarray, rho: np.ndarray, cv2: np.ndarray) -> np.ndarray:
    """The Cramér-Lundberg constant ``C = (1 − ρ)/(ρ·M'(x) − 1)``, ``M`` the service's moment
    generating function at ``x = θ·E[S]`` (mean 1): ``P(W > t) ~ C·e^(−θt)``. ``C = ρ`` for
    exponential service; above ``ρ`` at light load for near-constant service."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        slope = _mgf_slope(x, *_shape(cv2))
    return (1.0 - rho) / (rho * slope - 1.0)


def _decay(rho: np.ndarray, cv2: np.ndarray) -> np.ndarray:
    """``θ·E[S]``: the positive root of the excess ``ρ·(E[e^(xS/E[S])] − 1) − x`` (gamma service
    of mean 1 and ``cv2``, constant at 0; negative just above 0 while ρ < 1, convex).

    Bisection on the excess until the bracket is narrow, then Newton steps from its top:
    the excess is convex and positive there, so each step lands between the root and the top,
    quadratically closer. A simulated run prices its stages every interval and a solve prices
    every row: 60 bisection steps were most of both (benchmarks/README.md, "Simulator speed",
    "Solve time")."""
    lo = np.zeros_like(rho)
    shape = _shape(cv2)
    hi = np.where(shape[1], _X_MAX, np.minimum(1.0 / np.maximum(cv2, _CV2_CONSTANT), _X_MAX))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        at_pole = np.ones(rho.shape, dtype=bool)  # the top still where the excess is infinite
        for step in range(_ROOT_STEPS):
            if step >= _BISECT_STEPS and not at_pole.any():
                break  # narrow, and Newton can start from every top: a finite excess there
            mid = (lo + hi) / 2
            excess = rho * _mgf(mid, *shape) - mid
            above = excess > 0
            hi = np.where(above, mid, hi)
            lo = np.where(above, lo, mid)
            at_pole &= ~(above & np.isfinite(excess))
        x = hi
        for _ in range(_NEWTON_STEPS):
            step = (rho * _mgf(x, *shape) - x) / (rho * _mgf_slope(x, *shape) - 1.0)
            ok = np.isfinite(step) & (step > 0)  # from above the root a step goes down, never past it
            x = np.where(ok, x - step, x)
            if not (ok & (step > _ROOT_TOLERANCE * x)).any():
                break
    return x


def wait_quantile_s(load_rps: float, replicas: np.ndarray, batch: np.ndarray, mean_s: np.ndarray,
                    cv2: np.ndarray, percentile: float) -> np.ndarray:
    """Per configuration, the ``percentile`` of the time a request's batch waits for its replica
    (module docstring), at stage load ``load_rps`` shared by ``replicas`` replicas running
    batches of ``batch`` with mean service ``mean_s`` and squared coefficient of variation ``cv2``."""
    if not 0 < percentile < 100:
        raise ValueError(f"percentile must be in (0, 100), got {percentile!r}")
    mean = np.asarray(mean_s, dtype=float)
    rho = load_rps * mean / (np.asarray(replicas, dtype=float) * np.asarray(batch, dtype=float))
    tail = 1.0 - percentile / 100.0
    out = np.zeros_like(rho)
    saturated = rho >= 1.0
    out[saturated] = SATURATED_WAIT_S
    waits = (rho > tail) & ~saturated & (mean > 0)
    if waits.any():
        r, c = rho[waits], np.broadcast_to(np.asarray(cv2, dtype=float), rho.shape)[waits]
        x = _decay(r, c)
        # A root at the gamma's pole (a very wide service time, x·cv2 = 1 in floating point) gives C = 0:
        # log 0 = -inf, i.e. no more than 1 - p of requests wait, as the limit is; no warning.
        with np.errstate(divide="ignore"):
            out[waits] = mean[waits] * np.maximum(np.log(_prefactor(x, r, c) / tail), 0.0) / x
    return out

