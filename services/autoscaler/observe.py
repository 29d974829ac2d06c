"""What the loop hands the policy: a source's :class:`PoolLoad` and a target's group status
combined into :class:`PoolSignals`, and the pool's policy within the target's bounds.

Pure functions. The target's counts map to the policy's disjoint groups like this (a
target, like Nomad, counts an instance it is stopping as neither running nor desired)::

    reclaiming = instances on reclaimed machines (at most the running ones)
    serving    = running - reclaiming
    starting   = max(0, desired - running)     placing, provisioning, loading the model
    draining   = instances the signals show draining (stopped, finishing their streams)

so that serving + starting is the target's count unless machines are being reclaimed.
A target's "running" means the process started, not that the model is loaded: a
preemptible instance counts as serving only once the signals show it serving (the rest
count as starting), because a serving preemptible instance is what lets an on-demand one
go (a loading one may yet fail).

How long the oldest starting instance has waited (a preemptible one past its placement
deadline counts as a failing placement) is the larger of the target's figure, when it gives
one, and the loop's estimate (:class:`StartingSince`): the loop owns time. Both are lower
bounds of the true age, so neither declares placements failing on a group that merely keeps
growing (a ramp always has *some* instance starting, none of them old). The target's figure
covers instances not running yet (Nomad's pending allocations); a preemptible instance that
runs but is not seen serving (loading its model, or stuck loading it) ages in the loop's
estimate from the evaluation that first saw it so, and only while the signals are fresh:
stale or missing signals cannot tell a serving instance from a stuck one, so a telemetry
outage never makes running instances look stuck.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

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
    "StartingSince",
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
    starting_for: Callable[[CapacityGroup, int | None], float],
) -> Observation:
    """Combines a pool's load, its groups' status and reclaims (counted by group name).

    ``starting_for(group, unseen)`` is called once for every group at every evaluation: it
    follows the group's counts (:meth:`StartingSince.update`) and gives the loop's estimate
    of how long the oldest starting instance of ``group`` has waited. ``unseen`` is the
    number of the group's running instances that count as starting because the signals do
    not show them serving, or ``None`` when the signals are stale or missing and cannot
    tell. The target's own figure wins when it is larger.
    """
    fresh = not load.missing and load.age_s <= policy.stale_after_s
    draining = Counter(i.capacity_class for i in load.instances if not i.serving)
    seen_serving = Counter(i.capacity_class for i in load.instances if i.serving)
    groups: dict[CapacityGroup, GroupSignals] = {}
    for group in CapacityGroup:
        st = status.get(group)
        signals = group_signals(
            st, reclaims.get(st.name, 0) if st else 0, draining=draining[group.value]
        )
        unseen = 0
        if group is CapacityGroup.PREEMPTIBLE:
            unseen = max(0, signals.serving - seen_serving[group.value])
        if unseen:
            signals = replace(
                signals, serving=signals.serving - unseen, starting=signals.starting + unseen
            )
        waited = starting_for(group, unseen if fresh else None)
        if signals.starting:
            reported = st.oldest_pending_s if st and st.oldest_pending_s is not None else 0.0
            signals = replace(signals, oldest_starting_s=max(waited, reported))
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
        demand_age_s=min(load.router_age_s, load.age_s),
    )


@dataclass
class StartingSince:
    """When each starting instance of one group began to wait, as far as the loop can tell.

    Two kinds of starting instance are stamped apart. *Requested* ones (the target's count
    less its running instances: placing, provisioning) get the evaluation that first sees
    the count rise; instances that start running leave oldest first, cancelled ones newest
    first (targets cancel the youngest starting instances). *Unseen* ones (running, but not
    shown serving by the signals: loading the model, or stuck loading it) get the
    evaluation that first sees them so; those that come to serve leave oldest first. What
    is left is one stamp per starting instance. A stamp is never earlier than the real
    request (or start), so the age is never overestimated: a ramp, which always has some
    instance starting, never looks like a placement that failed (the age of the *oldest
    starting instance* is what the deadline is about, not how long the group has not been
    idle). The price of that bound: while other instances keep coming and serving, one
    that never serves may take the place of a younger one and look younger than it is;
    it is found at the latest a deadline after the last such arrival.

    Stale or missing signals (``unseen`` is ``None``) cannot tell which running instances
    serve: the unseen stamps are dropped, and the instances still unseen when the signals
    return are stamped then. A telemetry outage therefore never makes serving instances
    look stuck, and a stuck one is found a deadline after the signals are fresh again.
    """

    desired: int = 0
    """The target's count at the last update."""
    running: int = 0
    """Its running instances at the last update."""
    stamps: deque[float] = field(default_factory=deque)
    """One request time per requested instance, oldest first."""
    unseen: deque[float] = field(default_factory=deque)
    """One time per running instance not seen serving, oldest first."""

    def update(self, status: GroupStatus | None, now: float, unseen: int | None) -> float:
        """Follows the group's counts to ``now``, ``unseen`` of its running instances not
        seen serving (``None``: the signals cannot tell); the oldest starting one's age."""
        desired, running = (status.desired, status.running) if status else (0, 0)
        for _ in range(max(0, running - self.running)):  # started: the oldest first
            if self.stamps:
                self.stamps.popleft()
        for _ in range(max(0, self.desired - desired)):  # cancelled: the youngest first
            if self.stamps:
                self.stamps.pop()
        _follow(self.stamps, max(0, desired - running), now)
        if unseen is None:
            self.unseen.clear()
        _follow(self.unseen, unseen or 0, now)
        self.desired, self.running = desired, running
        return max((now - s[0] for s in (self.stamps, self.unseen) if s), default=0.0)


def _follow(stamps: deque[float], count: int, now: float) -> None:
    """Leaves ``count`` stamps: the oldest leave first, new ones are ``now``."""
    while len(stamps) > count:
        stamps.popleft()
    while len(stamps) < count:  # new instances, or replacements of lost ones
        stamps.append(now)


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
