"""How far demand has risen within one lead time, measured on the pool's own history.

Capacity released now cannot come back for one lead time, and capacity requested now arrives
one lead time later; so the pool must hold, above today's demand, what demand may add within
one lead time. How much that is depends on the traffic: a Poisson stream of independent
arrivals adds about ``sqrt(D)``, a bursty one (the Azure trace) several times that. This
module measures it instead of assuming it.

For every evaluation older than one lead time, its *rise* is the highest demand seen during
the lead time that followed it, less its own demand, in units of ``sqrt(demand)`` (so that a
rise measured at one load level transfers to a nearby one). The margin is a high quantile of
the rises of the recent past.
"""

from __future__ import annotations

import bisect
import math
from operator import itemgetter

from services.autoscaler.policy.config import PoolPolicy

__all__ = ["OpenRise", "Rise", "measure_rises", "rise_quantile", "track_rises"]

OpenRise = tuple[float, int, int]
"""``(time, demand then, highest demand since)`` of an evaluation younger than one lead time."""
Rise = tuple[float, float]
"""``(time, rise in units of sqrt(demand))`` of an evaluation whose lead time has passed."""


def track_rises(
    open_rises: tuple[OpenRise, ...],
    rises: tuple[Rise, ...],
    now: float,
    demand: int,
    horizon_s: float,
    history_s: float,
) -> tuple[tuple[OpenRise, ...], tuple[Rise, ...]]:
    """Add the evaluation at ``now`` and close every rise whose horizon has passed.

    Returns the updated open rises (younger than ``horizon_s``, this one included) and the
    closed rises no older than ``history_s``.
    """
    updated: list[OpenRise] = []
    closed: list[Rise] = []
    for at, then, highest in open_rises:
        if now - at > horizon_s:
            closed.append((at, (highest - then) / math.sqrt(max(then, 1))))
        else:
            updated.append((at, then, max(highest, demand)))
    updated.append((now, demand, demand))
    cutoff = now - history_s
    # Both are in time order and every closed rise is newer than the kept ones.
    kept = rises[bisect.bisect_left(rises, (cutoff,)) :]
    return tuple(updated), kept + tuple(r for r in closed if r[0] >= cutoff)


def rise_quantile(
    rises: tuple[Rise, ...], quantile: float, now: float, min_span_s: float
) -> float | None:
    """The ``quantile`` of the measured rises (nearest rank), or None until they reach back at
    least ``min_span_s`` before ``now``: a quantile of a few minutes would be whatever happened
    in those minutes (one spike at start-up would set the margin for the next hour)."""
    if not rises or now - rises[0][0] < min_span_s:
        return None
    ordered: list[float] = sorted(map(itemgetter(1), rises))
    rank = min(len(ordered), max(1, math.ceil(quantile * len(ordered))))
    return max(0.0, ordered[rank - 1])


def measure_rises(
    open_rises: tuple[OpenRise, ...],
    rises: tuple[Rise, ...],
    now: float,
    demand: int,
    config: PoolPolicy,
) -> tuple[tuple[OpenRise, ...], tuple[Rise, ...], float | None]:
    """Track this evaluation's demand and return the updated history with the configured
    quantile of the rises over the slower group's lead time; None while disabled or until the
    rises span half of ``rise_history_s`` (until then the statistical margin alone applies)."""
    if config.rise_history_s <= 0:
        return (), (), None
    open_rises, rises = track_rises(
        open_rises, rises, now, demand, config.longest_lead_time_s, config.rise_history_s
    )
    quantile = rise_quantile(rises, config.rise_quantile, now, config.rise_history_s / 2)
    return open_rises, rises, quantile
