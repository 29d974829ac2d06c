"""The contract between the evaluation loop and whatever runs the instances.

A :class:`ScaleTarget` reports the state of every capacity group it manages,
changes a group's instance count and tells which instances are about to be
taken away (preemptible capacity being reclaimed). A group is one pool (for
example ``asr_small``) in one capacity class (on-demand or preemptible); its
name is :func:`group_name` of the two, so the loop and every target agree.

Scaling down drains: the target stops instances by draining them (Nomad sends
``kill_signal`` and waits ``kill_timeout``; the local target sends SIGTERM), and
each instance finishes its streams before it exits, up to its drain timeout;
streams still running then are failed over by the router. The local target
also picks the emptiest instances; Nomad picks the allocations itself.

Expected refusals (a deployment in progress, a count outside the bounds) come
back as a :class:`ScaleResult`; only an unreachable or incoherent target raises
:class:`TargetUnavailable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from voxmesh.discovery.base import CAPACITY_ON_DEMAND, CAPACITY_PREEMPTIBLE
from voxmesh.errors import Unavailable

__all__ = [
    "CapacityClass",
    "GroupStatus",
    "Reclaim",
    "Refusal",
    "ScaleOutcome",
    "ScaleResult",
    "ScaleTarget",
    "ScalingEvent",
    "TargetUnavailable",
    "group_name",
]


class CapacityClass(StrEnum):
    """How a group's instances are paid for; the values match discovery's ``capacity_class``."""

    ON_DEMAND = CAPACITY_ON_DEMAND
    PREEMPTIBLE = CAPACITY_PREEMPTIBLE


def group_name(pool: str, capacity_class: CapacityClass) -> str:
    """The name of a capacity group: ``asr_small/preemptible``."""
    return f"{pool}/{capacity_class.value}"


class TargetUnavailable(Unavailable):
    """The target could not be reached or answered something it should not have."""


@dataclass(frozen=True)
class ScalingEvent:
    """A count change recorded by the target (for Nomad: a job scaling event)."""

    time: float
    """When it happened, in seconds since the epoch."""
    count: int | None
    """The count it set; ``None`` for an event that changed no count."""
    previous_count: int
    """The count before it."""
    message: str
    """The free-text message given with it."""
    meta: Mapping[str, str] = field(default_factory=dict)
    """Metadata given with it (ours carries the autoscaler's marker)."""


@dataclass(frozen=True)
class GroupStatus:
    """What a target knows about one capacity group right now."""

    name: str
    """The group's name, :func:`group_name` of ``pool`` and ``capacity_class``."""
    pool: str
    """The pool it serves (``asr_small``)."""
    capacity_class: CapacityClass
    """On-demand or preemptible."""
    desired: int
    """The count asked for."""
    running: int
    """Instances running now (not being stopped)."""
    placed: int
    """Instances placed on a machine, running or still starting."""
    healthy: int
    """Instances that passed their health checks."""
    pending: int
    """Placed instances that have not started yet."""
    oldest_pending_s: float | None = None
    """Seconds since the oldest placed instance that is not running yet was created (Nomad:
    now less the ``CreateTime`` of the oldest pending allocation; local: since its process
    started); 0.0 when none is pending; ``None`` when the target cannot tell. The loop takes
    the larger of this and its own estimate (from when the count rose), so an instance not
    placed at all still ages."""
    min_count: int = 0
    """Lower bound of the count (Nomad: the group's ``scaling`` block)."""
    max_count: int | None = None
    """Upper bound of the count; ``None`` when the target sets none."""
    placement_failing: bool = False
    """True when instances cannot be placed (no machine has room)."""
    placement_reason: str = ""
    """Why placement fails, in words; empty when it does not."""
    deployment_active: bool = False
    """True while a rollout is in progress; counts cannot change until it ends."""
    external_change: ScalingEvent | None = None
    """The latest count change not made by this autoscaler, when it is the latest of all:
    the loop adopts it rather than fighting it."""


class Refusal(StrEnum):
    """Why a target refused a count change."""

    DEPLOYMENT_ACTIVE = "deployment-active"
    OUT_OF_BOUNDS = "out-of-bounds"
    UNKNOWN_GROUP = "unknown-group"
    DISABLED = "disabled"
    """The operator disabled scaling of the group (Nomad: ``scaling { enabled = false }``)."""
    REJECTED = "rejected"
    """Any other refusal; the detail says what."""


class ScaleOutcome(StrEnum):
    """What a scale call did."""

    APPLIED = "applied"
    UNCHANGED = "unchanged"
    """The (clamped) count was already in force; nothing was sent."""
    REFUSED = "refused"


@dataclass(frozen=True)
class ScaleResult:
    """The answer to one scale call."""

    group: str
    """The group it was for."""
    outcome: ScaleOutcome
    """Applied, unchanged or refused."""
    requested: int
    """The count the caller asked for."""
    count: int
    """The count sent to the target, after clamping to the group's bounds."""
    previous: int
    """The count in force before the call."""
    refusal: Refusal | None = None
    """Why it was refused; ``None`` unless ``outcome`` is ``REFUSED``."""
    detail: str = ""
    """Human-readable detail: the target's own message, or how the count was clamped."""


@dataclass(frozen=True)
class Reclaim:
    """An instance whose machine is being taken away (preemption, node drain)."""

    group: str
    """The capacity group of the instance."""
    instance_id: str
    """The instance (Nomad: the allocation ID)."""
    node: str
    """The machine it runs on (Nomad: the node name)."""
    reason: str
    """Why, in words (``node draining``, ``node ineligible``)."""
    deadline: float | None = None
    """When the instance will be stopped at the latest (epoch seconds), if known."""


class ScaleTarget(Protocol):
    """Runs the instances of every capacity group; implementations are Nomad and local."""

    async def status(self) -> dict[str, GroupStatus]:
        """The state of every group the target manages, keyed by group name."""
        ...

    async def scale(
        self, group: str, count: int, reason: str, meta: Mapping[str, str] | None = None
    ) -> ScaleResult:
        """Sets a group's count; ``reason`` is recorded with the change."""
        ...

    async def reclaiming(self) -> list[Reclaim]:
        """Instances on preemptible capacity that is being reclaimed now."""
        ...
