"""Splitting a pool's total between on-demand (baseline, fallback) and preemptible (bursts)."""

from __future__ import annotations

from dataclasses import dataclass

from services.autoscaler.policy.config import PoolPolicy
from services.autoscaler.policy.inputs import GroupSignals

__all__ = ["Split", "counted_preemptible", "preemptible_unreliable", "split_total"]


@dataclass(frozen=True)
class Split:
    """Per-group recommendation for one total."""

    on_demand: int
    """On-demand instances recommended."""
    preemptible: int
    """Preemptible instances recommended (kept requested even while placements fail, so the
    scheduler places them as soon as capacity returns)."""
    fallback: int
    """On-demand instances that stand in for preemptible ones that are missing."""
    why_fallback: str
    """Why preemptible capacity is not trusted ("" when it is)."""


def preemptible_unreliable(group: GroupSignals, config: PoolPolicy) -> str:
    """Why starting preemptible instances cannot be counted on, or "" if they can."""
    if group.reclaiming:
        return f"{group.reclaiming} preemptible being reclaimed"
    if group.placement_failing:
        return "preemptible placements failing"
    if group.starting and group.oldest_starting_s > config.preemptible.placement_deadline_s:
        return f"preemptible pending for {group.oldest_starting_s:.0f} s"
    return ""


def counted_preemptible(group: GroupSignals, config: PoolPolicy) -> int:
    """Preemptible instances the pool can count on: serving and starting ones, or only the
    serving ones while preemptible capacity is not trusted."""
    return group.serving if preemptible_unreliable(group, config) else group.current


def split_total(total: int, preemptible: GroupSignals, config: PoolPolicy) -> Split:
    """Baseline on on-demand, the rest on preemptible; on-demand covers what is missing.

    The preemptible share is ``total - on_demand.min_count`` within its bounds, whatever the
    placement state. When preemptible capacity cannot be counted on (placements failing,
    instances pending past the deadline, a reclaim notice), only *serving* preemptible
    instances count and on-demand takes the shortfall at once. When preemptible capacity
    returns, its instances start, and each one that serves takes the place of an on-demand one.
    """
    od, pe = config.on_demand, config.preemptible
    want_pe = pe.clamp(total - od.min_count)
    why = preemptible_unreliable(preemptible, config)
    counted_pe = min(want_pe, preemptible.serving) if why else want_pe
    want_od = od.clamp(total - counted_pe)
    fallback = max(0, min(want_od - od.clamp(total - want_pe), want_pe - counted_pe))
    return Split(on_demand=want_od, preemptible=want_pe, fallback=fallback, why_fallback=why)
