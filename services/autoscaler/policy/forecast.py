"""How many instances a pool needs: demand, its growth over the lead time, and the GPU guard."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from services.autoscaler.policy.config import PoolPolicy
from services.autoscaler.policy.inputs import InstanceSignals, PoolSignals

__all__ = ["Need", "demand_slope", "guarded_waste", "instances_needed", "trim_samples"]


@dataclass(frozen=True)
class Need:
    """The pool's total instance requirement and what it was derived from."""

    instances: int
    """Instances needed across both groups, before bounds."""
    exact: float
    """The same requirement before rounding up (used by the tolerance band)."""
    predicted_demand: float
    """Demand expected one lead time from now, in streams."""
    slope: float
    """Estimated demand growth in streams per second (may be negative)."""
    saturated: int
    """Serving instances the GPU guard counts as full."""
    rise_sigmas: float | None = None
    """Measured rise of demand within one lead time (units of sqrt(demand)) that the spare
    slots cover; None while there is not enough history."""
    rise_sets_margin: bool = False
    """Whether the measured rise, rather than the statistical margin, set the spare slots."""


def trim_samples(
    samples: tuple[tuple[float, int], ...], now: float, window_s: float
) -> tuple[tuple[float, int], ...]:
    """Samples no older than ``window_s`` before ``now``."""
    return tuple(sample for sample in samples if sample[0] >= now - window_s)


def demand_slope(
    samples: tuple[tuple[float, int], ...], window_s: float, confidence_sigmas: float
) -> float:
    """A cautious estimate of demand growth, in streams per second.

    The least-squares slope of demand over time, less ``confidence_sigmas`` standard errors
    (and never below zero): only growth that stands out from the noise is anticipated.
    Acting on noise is how autoscalers overshoot, and an overshoot is held for a whole
    scale-down window. Zero until the samples span at least half the window.
    """
    if len(samples) < 3 or samples[-1][0] - samples[0][0] < window_s / 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_d = sum(d for _, d in samples) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in samples)
    if var_t == 0:
        return 0.0
    slope = sum((t - mean_t) * (d - mean_d) for t, d in samples) / var_t
    residuals = sum((d - mean_d - slope * (t - mean_t)) ** 2 for t, d in samples)
    stderr = math.sqrt(residuals / (n - 2) / var_t)
    return max(0.0, slope - confidence_sigmas * stderr)


def _saturated(instance: InstanceSignals, config: PoolPolicy) -> bool:
    """Whether the GPU guard counts ``instance`` as full."""
    return (
        (
            instance.gpu_utilisation is not None
            and instance.gpu_utilisation > config.gpu_utilisation_limit
        )
        or (
            instance.gpu_memory_ratio is not None
            and instance.gpu_memory_ratio > config.gpu_memory_limit
        )
        or (
            instance.real_time_factor is not None
            and instance.real_time_factor > config.real_time_factor_limit
        )
    )


def guarded_waste(
    instances: Iterable[InstanceSignals], max_streams: int, config: PoolPolicy
) -> tuple[int, int]:
    """``(saturated instances with free slots, the slots they hide)``: an instance whose GPU
    is full is not free even if under its stream count, so those slots must come from
    elsewhere."""
    count = waste = 0
    for instance in instances:
        hidden = max_streams - instance.active_streams
        if hidden > 0 and _saturated(instance, config):
            count += 1
            waste += hidden
    return count, waste


def instances_needed(
    signals: PoolSignals,
    slope: float,
    lead_time_s: float,
    config: PoolPolicy,
    rise_sigmas: float | None = None,
) -> Need:
    """Instances the pool needs to serve the demand expected one lead time from now.

    slots = max(D' / target_utilisation, D' + burst_sigmas * sqrt(D'), D + rise * sqrt(D))
    with D the demand, D' = D + max(0, slope) * lead_time and ``rise_sigmas`` the measured
    rise (ignored when None); the hidden slots of GPU-saturated instances are added, and the
    total is divided by the per-instance stream limit.
    """
    demand = signals.demand
    predicted = demand + max(0.0, slope) * lead_time_s
    if predicted <= 0:
        slots = measured = 0.0
    else:
        measured = demand + (rise_sigmas or 0.0) * math.sqrt(demand)
        slots = max(
            predicted / config.target_utilisation,
            predicted + config.burst_sigmas * math.sqrt(predicted),
            measured,
        )
    saturated, waste = guarded_waste(signals.instances, signals.max_streams, config)
    exact = (slots + waste) / signals.max_streams
    return Need(
        instances=math.ceil(exact - 1e-9),
        exact=exact,
        predicted_demand=predicted,
        slope=slope,
        saturated=saturated,
        rise_sigmas=rise_sigmas,
        rise_sets_margin=rise_sigmas is not None and slots > 0 and measured >= slots,
    )
