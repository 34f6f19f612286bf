"""Latency-targeted scaling: the largest phi (on a 0.25 grid) whose measured latency fits.

The search is pure Python over a ``measure(phi) -> ms`` callable, so it is tested with a
fake clock; ``effscale scale --target-latency`` passes one that builds and times each phi.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from effscale.errors import ConfigError

STEP = 0.25
MAX_PHI = 8.0  # beyond B7's compute; the sanity limits of net/scaling stop larger phi anyway

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|us)?\s*$", re.IGNORECASE)


def parse_latency_ms(text: str) -> float:
    """``30ms``, ``0.03s``, ``30000us`` or a bare number of milliseconds -> milliseconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f"latency {text!r} is not a duration; write e.g. 30ms or 0.03s")
    value = float(match.group(1)) * {"ms": 1.0, "s": 1e3, "us": 1e-3}[(match.group(2) or "ms").lower()]
    if value <= 0:
        raise ConfigError(f"latency must be positive, got {text!r}")
    return value


def search_phi(target_ms: float, measure: Callable[[float], float], step: float = STEP,
               max_phi: float = MAX_PHI, lower_batch_hint: bool = False) -> dict:
    """Largest ``k * step`` with ``measure(phi) <= target_ms``, by doubling then bisection.

    Returns ``{"phi", "latency_ms", "next_phi", "next_latency_ms", "measured": {phi: ms}}``;
    ``next_*`` is phi + step, measured and over the target (None when phi is ``max_phi``).
    Latency is assumed to grow with phi; every phi is measured at most once.
    """
    measured: dict[float, float] = {}

    def fits(k: int) -> bool:
        phi = k * step
        if phi not in measured:
            measured[phi] = float(measure(phi))
        return measured[phi] <= target_ms

    if not fits(0):
        raise ConfigError(f"target {target_ms:g} ms is below the smallest model's latency "
                          f"(phi=0: {measured[0.0]:.1f} ms on this device); raise the target"
                          f"{' or lower --batch' if lower_batch_hint else ''}")
    top = int(round(max_phi / step))
    lo, hi = 0, 1
    while hi <= top and fits(hi):
        lo, hi = hi, min(top + 1, hi * 2)
    # lo fits; hi does not (or is past the top). Bisect the gap down to one step.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid > top or not fits(mid):
            hi = mid
        else:
            lo = mid
    phi = lo * step
    nxt = hi * step if hi <= top else None
    return {"phi": phi, "latency_ms": measured[phi], "next_phi": nxt,
            "next_latency_ms": measured.get(nxt) if nxt is not None else None,
            "target_ms": target_ms, "measured": dict(sorted(measured.items()))}


def measured_search(target_ms: float, coefficients, family: str, batch: int, runs: int = 50,
                    threads: int | None = None, report=None) -> dict:
    """``search_phi`` with each phi built and timed in a fresh process (batch ``batch``, p50)."""
    from effscale.bench.interleave import measure_isolated
    from effscale.bench.measure import BenchSettings
    from effscale.bench.targets import phi_target

    from effscale.errors import SanityLimitError
    from effscale.net.scaling import compound

    settings = BenchSettings(batch=batch, runs=runs, throughput_batch=0, threads=threads)
    max_phi = 0.0
    while max_phi + STEP <= MAX_PHI:  # the largest grid phi the sanity limits allow
        try:
            compound(max_phi + STEP, coefficients, family=family)
        except SanityLimitError:
            break
        max_phi += STEP

    def measure(phi: float) -> float:
        ms = measure_isolated(phi_target(phi, coefficients, family), settings)["p50_ms"]
        if report:
            report(f"phi={phi:g}: p50 {ms:.1f} ms at batch {batch} ({'fits' if ms <= target_ms else 'over'} "
                   f"{target_ms:g} ms)")
        return ms

    return search_phi(target_ms, measure, max_phi=max_phi, lower_batch_hint=batch > 1)
