"""What the loop hands the policy: a source's :class:`PoolLoad` and a target's group status
combined into :class:`PoolSignals`, and the pool's policy within the target's bounds.

Pure functions. The target's counts map to the policy's disjoint groups like this (a
target, like Nomad, counts an instance it is stopping as neither running nor desired)::

    reclaiming = instances on reclaimed machines (at most the running ones)
    serving    = running - reclaiming
    starting   = max(0, desired - running)     placing, provisioning, loading the model
    draining   = instances the signals show draining (stopped, finishing their streams)

so that serving + starting is the target's count unless machines are being reclaimed.
How long a group has had starting instances is the loop's to measure (it owns time).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from services.autoscaler.policy import (
    CapacityGroup,
    GroupDecision,
    GroupLimits,
    GroupSignals,
    InstanceSignals,
    PoolPolicy,
    PoolSignals,
)
from services.autoscaler.records import GroupView
from services.autoscaler.signals.base import PoolLoad
from services.autoscaler.targets.base import CapacityClass, GroupStatus, group_name

__all__ = [
    "Observation",
    "bounded_policy",
    "group_signals",
    "group_view",
    "observe_pool",
    "pool_signals",
]


@dataclass(frozen=True)
class Observation:
    """One pool as an evaluation sees it."""

    groups: Mapping[CapacityGroup, GroupSignals]
    """Each capacity group's counts."""
    signals: PoolSignals
    """Everything the policy reads."""
    policy: PoolPolicy
    """The pool's policy within the target's bounds."""


def observe_pool(
    policy: PoolPolicy,
    fallback_max_streams: int,
    load: PoolLoad,
    status: Mapping[CapacityGroup, GroupStatus | None],
    reclaims: Mapping[str, int],
    starting_for: Callable[[CapacityGroup], float],
) -> Observation:
    """Combines a pool's load, its groups' status and reclaims (counted by group name).

    ``starting_for(group)`` gives how long ``group`` has had starting instances; it is
    asked only for groups that have some.
    """
    draining = Counter(i.capacity_class for i in load.instances if not i.serving)
    groups: dict[CapacityGroup, GroupSignals] = {}
    for group in CapacityGroup:
        st = status.get(group)
        signals = group_signals(
            st, reclaims.get(st.name, 0) if st else 0, draining=draining[group.value]
        )
        if signals.starting:
            signals = replace(signals, oldest_starting_s=starting_for(group))
        groups[group] = signals
    return Observation(
        groups=groups,
        signals=pool_signals(
            load,
            groups[CapacityGroup.ON_DEMAND],
            groups[CapacityGroup.PREEMPTIBLE],
            fallback_max_streams,
        ),
        policy=bounded_policy(
            policy, status.get(CapacityGroup.ON_DEMAND), status.get(CapacityGroup.PREEMPTIBLE)
        ),
    )


def group_signals(
    status: GroupStatus | None, reclaims: int = 0, *, draining: int = 0
) -> GroupSignals:
    """The policy's view of one capacity group (all zero when the target lacks it).

    ``reclaims`` is the number of the group's instances the target reports reclaimed;
    ``draining`` the number the signals show finishing their streams (stopped instances
    the target no longer counts).
    """
    if status is None:
        return GroupSignals(draining=draining)
    reclaiming = min(reclaims, status.running)
    return GroupSignals(
        serving=status.running - reclaiming,
        starting=max(0, status.desired - status.running),
        draining=draining,
        reclaiming=reclaiming,
        placement_failing=status.placement_failing,
    )


def pool_signals(
    load: PoolLoad,
    on_demand: GroupSignals,
    preemptible: GroupSignals,
    fallback_max_streams: int,
) -> PoolSignals:
    """Everything the policy reads about one pool at one evaluation."""
    groups = {group.value: group for group in CapacityGroup}
    return PoolSignals(
        pool=load.pool,
        max_streams=load.max_streams or fallback_max_streams,
        active_streams=load.active_streams,
        queued_realtime=load.queued_realtime,
        queued_batch=load.queued_batch,
        on_demand=on_demand,
        preemptible=preemptible,
        instances=tuple(
            InstanceSignals(
                group=groups.get(i.capacity_class, CapacityGroup.ON_DEMAND),
                active_streams=i.active_streams,
                gpu_utilisation=i.gpu_utilisation,
                gpu_memory_ratio=i.gpu_memory_ratio,
                real_time_factor=i.real_time_factor,
            )
            for i in load.instances
            if i.serving
        ),
        age_s=load.age_s,
    )


def bounded_policy(
    policy: PoolPolicy, on_demand: GroupStatus | None, preemptible: GroupStatus | None
) -> PoolPolicy:
    """``policy`` with each group's bounds narrowed to what the target allows.

    A group the target does not run gets ``max_count`` 0 (the local mesh without a
    preemptible group); a target's ``max_count`` below the policy's minimum wins.
    """
    return replace(
        policy,
        on_demand=_narrow(policy.on_demand, on_demand),
        preemptible=_narrow(policy.preemptible, preemptible),
        allow_scale_to_zero=policy.allow_scale_to_zero or _max_of(on_demand) == 0,
    )


def _max_of(status: GroupStatus | None) -> int | None:
    return 0 if status is None else status.max_count


def _narrow(limits: GroupLimits, status: GroupStatus | None) -> GroupLimits:
    high = limits.max_count
    target_max = _max_of(status)
    if target_max is not None:
        high = min(high, target_max)
    low = min(max(limits.min_count, status.min_count if status else 0), high)
    if (low, high) == (limits.min_count, limits.max_count):
        return limits
    return replace(limits, min_count=low, max_count=high)


def group_view(
    pool: str,
    capacity_class: CapacityClass,
    status: GroupStatus | None,
    target_count: int,
    signals: GroupSignals,
    decision: GroupDecision,
    limits: GroupLimits,
) -> GroupView:
    """One capacity group as an evaluation saw it (and left it: ``target_count`` is the
    count in force after the evaluation's action), for the status API."""
    return GroupView(
        group=group_name(pool, capacity_class),
        capacity_class=capacity_class,
        target_count=target_count,
        desired=decision.desired,
        serving=signals.serving,
        starting=signals.starting,
        draining=signals.draining,
        reclaiming=signals.reclaiming,
        min_count=limits.min_count,
        max_count=limits.max_count,
        placement_failing=signals.placement_failing,
        placement_reason=status.placement_reason if status else "",
    )
