"""The Nomad scale target: capacity groups are task groups of Nomad jobs.

Layout (see ``nomad/README.md``): every model runs as two jobs, one per
capacity class, because a node pool is a job attribute and a deployment blocks
scaling of the whole job: ``asr-small-ondemand`` (node pool ``gpu-ondemand``)
and ``asr-small-preemptible`` (node pool ``gpu-preemptible``), each with one
task group ``asr``. :func:`default_groups` builds that mapping; any other is
configured with :class:`NomadGroup` entries.

What it reads, per job: the job (counts, ``scaling`` bounds), the scale status
(running/placed/healthy and the last 20 scaling events), the latest deployment,
the evaluations and the allocations; and the nodes, for reclaimed preemptible
capacity. What it writes: ``POST /v1/job/:id/scale`` with a ``Meta`` marker
(:data:`MARKER_KEY`) so that its own scaling events are told from anybody
else's. A count outside the bounds is clamped before it is sent; the 400s
Nomad still answers (active deployment, bounds changed meanwhile) come back as
refused :class:`ScaleResult` values.

A stopped job (``nomad job stop`` without purge: ``Stop`` on the job,
``JobStopped`` in its scale status) keeps its counts, and Nomad's ``Job.Scale``
still accepts new ones, but nothing is placed. Its groups are reported with
``desired`` 0 and as failing placement, the reason ``job <id> is stopped``,
and a scale call is refused (``REJECTED``) without being sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.autoscaler.targets.base import (
    CapacityClass,
    GroupStatus,
    Reclaim,
    Refusal,
    ScaleOutcome,
    ScaleResult,
    ScalingEvent,
    group_name,
)
from services.autoscaler.targets.nomad_api import JobState, Json, NomadApi, NomadApiError

__all__ = [
    "MARKER_KEY",
    "NomadGroup",
    "NomadTarget",
    "NomadTargetConfig",
    "default_groups",
    "describe_placement_failure",
]

logger = logging.getLogger(__name__)

MARKER_KEY = "voxmesh-autoscaler"
"""Key of the scaling-event ``Meta`` entry that marks a change as ours."""

_NS = 1e9
_ACTIVE_DEPLOYMENT = frozenset(
    {"running", "paused", "pending", "blocked", "unblocking", "initializing"}
)
"""Deployment statuses for which Nomad refuses to scale (``structs.Deployment.Active``)."""


@dataclass(frozen=True)
class NomadGroup:
    """Where one capacity group lives in Nomad."""

    pool: str
    """The pool (``asr_small``)."""
    capacity_class: CapacityClass
    """On-demand or preemptible."""
    job_id: str
    """The Nomad job ID."""
    task_group: str
    """The task group inside the job."""

    @property
    def name(self) -> str:
        """The capacity group's name (``asr_small/preemptible``)."""
        return group_name(self.pool, self.capacity_class)


def default_groups(pools: Sequence[str] = ("asr_small", "asr_large")) -> tuple[NomadGroup, ...]:
    """The layout of ``nomad/``: job ``asr-small-ondemand`` group ``asr``, and so on."""
    suffix = {CapacityClass.ON_DEMAND: "ondemand", CapacityClass.PREEMPTIBLE: "preemptible"}
    return tuple(
        NomadGroup(pool, cls, f"{pool.replace('_', '-')}-{suffix[cls]}", "asr")
        for pool in pools
        for cls in CapacityClass
    )


@dataclass(frozen=True)
class NomadTargetConfig:
    """How the Nomad target maps groups and recognises preemptible capacity."""

    groups: tuple[NomadGroup, ...] = field(default_factory=default_groups)
    """The capacity groups and their jobs."""
    autoscaler_id: str = "voxmesh"
    """Value of the :data:`MARKER_KEY` meta entry; the same on every replica of one autoscaler."""
    preemptible_node_pools: frozenset[str] = frozenset({"gpu-preemptible"})
    """Node pools whose nodes are preemptible."""
    preemptible_node_meta: Mapping[str, str] = field(default_factory=dict)
    """Node meta entries that also mark a node preemptible (all must match); empty: unused."""
    pending_deadline_s: float = 300.0
    """An allocation still pending after this long counts as a placement failure."""


class NomadTarget:
    """:class:`~services.autoscaler.targets.base.ScaleTarget` over the Nomad HTTP API."""

    def __init__(
        self,
        api: NomadApi,
        config: NomadTargetConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._config = config or NomadTargetConfig()
        self._groups = {g.name: g for g in self._config.groups}
        self._clock = clock

    async def status(self) -> dict[str, GroupStatus]:
        """Reads every configured job; a group whose job or task group is missing is left out."""
        result: dict[str, GroupStatus] = {}
        for job_id, groups in self._by_job().items():
            job = await self._api.read_job(job_id)
            if job is None:
                logger.warning("nomad job %s not found; its groups are not reported", job_id)
                continue
            state = await self._api.job_state(job_id)
            for group in groups:
                status = self._group_status(group, job, state)
                if status is not None:
                    result[group.name] = status
        return result

    async def scale(
        self, group: str, count: int, reason: str, meta: Mapping[str, str] | None = None
    ) -> ScaleResult:
        """Clamps ``count`` to the group's bounds and asks Nomad for it."""
        ref = self._groups.get(group)
        job = await self._api.read_job(ref.job_id) if ref else None
        tg = _task_group(job, ref.task_group) if job is not None and ref else None
        if ref is None or tg is None:
            detail = f"no Nomad task group is configured or registered for {group!r}"
            return ScaleResult(
                group, ScaleOutcome.REFUSED, count, count, 0, Refusal.UNKNOWN_GROUP, detail
            )
        if job and job.get("Stop"):
            detail = _stopped(ref.job_id)
            logger.info("not scaling %s -> %d: %s", group, count, detail)
            return ScaleResult(
                group, ScaleOutcome.REFUSED, count, count, 0, Refusal.REJECTED, detail
            )
        previous = int(tg.get("Count", 0))
        scaling = tg.get("Scaling") or {}
        if scaling and not scaling.get("Enabled", True):
            detail = f"scaling is disabled in the scaling block of {ref.job_id}.{ref.task_group}"
            return ScaleResult(
                group, ScaleOutcome.REFUSED, count, count, previous, Refusal.DISABLED, detail
            )
        low, high = _bounds(tg)
        target = max(low, count if high is None else min(count, high))
        detail = (
            f"clamped from {count} to {target} (bounds {low}..{high})" if target != count else ""
        )
        if target == previous:
            return ScaleResult(group, ScaleOutcome.UNCHANGED, count, target, previous, None, detail)
        body: Json = {
            "Count": target,
            "Target": {"Group": ref.task_group},
            "Message": reason,
            "Meta": {**(meta or {}), MARKER_KEY: self._config.autoscaler_id},
            "PolicyOverride": False,
        }
        try:
            answer = await self._api.scale_job(ref.job_id, body)
        except NomadApiError as exc:
            if exc.status not in (400, 404):
                raise
            refusal = _refusal(exc.status, exc.message)
            logger.info("nomad refused %s -> %d: %s", group, target, exc.message)
            return ScaleResult(
                group, ScaleOutcome.REFUSED, count, target, previous, refusal, exc.message
            )
        logger.info(
            "scaled %s from %d to %d (eval %s): %s",
            group,
            previous,
            target,
            answer.get("EvalID", ""),
            reason,
        )
        return ScaleResult(group, ScaleOutcome.APPLIED, count, target, previous, None, detail)

    async def reclaiming(self) -> list[Reclaim]:
        """Allocations of our groups on preemptible nodes being drained or made ineligible."""
        leaving = [
            stub
            for stub in await self._api.list_nodes()
            if stub.get("Drain")
            or stub.get("SchedulingEligibility") == "ineligible"
            or stub.get("Status") not in ("ready", None)
        ]
        nodes: dict[str, tuple[Json, str, float | None]] = {}
        for stub in leaving:
            node = await self._api.read_node(stub["ID"])
            if self._preemptible(node):
                nodes[node["ID"]] = (node, *_leaving_reason(node))
        if not nodes:
            return []
        result: list[Reclaim] = []
        for job_id, groups in self._by_job().items():
            by_task_group = {g.task_group: g for g in groups}
            state = await self._api.job_state(job_id)
            for alloc in state.allocations:
                group = by_task_group.get(alloc.get("TaskGroup", ""))
                entry = nodes.get(alloc.get("NodeID", ""))
                # An allocation Nomad already stops (DesiredStatus stop: migrated by
                # the drain, scaled down) is out of its Running count; it drains.
                if (
                    group is None
                    or entry is None
                    or alloc.get("DesiredStatus") != "run"
                    or alloc.get("ClientStatus") not in ("pending", "running")
                ):
                    continue
                node, reason, deadline = entry
                result.append(
                    Reclaim(
                        group.name,
                        alloc["ID"],
                        str(node.get("Name") or node["ID"]),
                        reason,
                        deadline,
                    )
                )
        return result

    def _by_job(self) -> dict[str, list[NomadGroup]]:
        jobs: dict[str, list[NomadGroup]] = {}
        for group in self._config.groups:
            jobs.setdefault(group.job_id, []).append(group)
        return jobs

    def _preemptible(self, node: Json) -> bool:
        if node.get("NodePool") in self._config.preemptible_node_pools:
            return True
        wanted = self._config.preemptible_node_meta
        meta = node.get("Meta") or {}
        return bool(wanted) and all(meta.get(k) == v for k, v in wanted.items())

    def _group_status(self, group: NomadGroup, job: Json, state: JobState) -> GroupStatus | None:
        tg = _task_group(job, group.task_group)
        scale = (state.scale.get("TaskGroups") or {}).get(group.task_group)
        if tg is None or scale is None:
            logger.warning(
                "task group %s not found in nomad job %s", group.task_group, group.job_id
            )
            return None
        allocs = [
            a
            for a in state.allocations
            if a.get("TaskGroup") == group.task_group and a.get("DesiredStatus") == "run"
        ]
        pending = [a for a in allocs if a.get("ClientStatus") == "pending"]
        low, high = _bounds(tg)
        stopped = bool(job.get("Stop") or state.scale.get("JobStopped"))
        reason = (
            _stopped(group.job_id)
            if stopped
            else _placement_failure(group.task_group, state.evaluations)
        )
        now = self._clock()
        ages = [max(0.0, now - a.get("CreateTime", 0) / _NS) for a in pending]
        late = [age for age in ages if age > self._config.pending_deadline_s]
        if not reason and late:
            reason = (
                f"{len(late)} allocation(s) pending for more than "
                f"{self._config.pending_deadline_s:g} s"
            )
        deployment = state.deployment
        return GroupStatus(
            name=group.name,
            pool=group.pool,
            capacity_class=group.capacity_class,
            desired=0 if stopped else int(tg.get("Count", 0)),
            running=int(scale.get("Running", 0)),
            placed=int(scale.get("Placed", 0)),
            healthy=int(scale.get("Healthy", 0)),
            pending=len(pending),
            oldest_pending_s=_oldest_pending(pending, ages),
            min_count=low,
            max_count=high,
            placement_failing=bool(reason),
            placement_reason=reason,
            deployment_active=bool(
                not stopped
                and deployment
                and deployment.get("Status") in _ACTIVE_DEPLOYMENT
                and deployment.get("JobCreateIndex") == job.get("CreateIndex")
            ),
            external_change=self._external_change(tg, scale.get("Events") or [], job),
        )

    def _external_change(self, tg: Json, events: list[Json], job: Json) -> ScalingEvent | None:
        """The latest count change, when somebody else made it.

        Nomad keeps the newest scaling event first. A job registration changes
        the count without any event: a count that differs from the one our
        latest event set, with a submit time after it, is reported too.
        """
        latest = next((e for e in events if e.get("Count") is not None), None)
        if latest is None:
            return None
        event = _scaling_event(latest)
        if event.meta.get(MARKER_KEY) != self._config.autoscaler_id:
            return event
        count = int(tg.get("Count", 0))
        submitted = job.get("SubmitTime", 0) / _NS
        if count != event.count and submitted > event.time:
            return ScalingEvent(
                submitted, count, event.count or 0, "count changed by a job registration"
            )
        return None


def _oldest_pending(pending: list[Json], ages: list[float]) -> float | None:
    """Age of the oldest pending allocation from its ``CreateTime`` (ns); 0.0 when none is
    pending, None when one lacks a ``CreateTime``."""
    if any(not a.get("CreateTime") for a in pending):
        return None
    return max(ages, default=0.0)


def _stopped(job_id: str) -> str:
    return f"job {job_id} is stopped"


def _task_group(job: Json, name: str) -> Json | None:
    return next((tg for tg in job.get("TaskGroups") or [] if tg.get("Name") == name), None)


def _bounds(tg: Json) -> tuple[int, int | None]:
    """The ``scaling`` block's min and max; (0, None) without one."""
    scaling = tg.get("Scaling")
    if not scaling:
        return 0, None
    return int(scaling.get("Min") or 0), int(scaling["Max"]) if scaling.get(
        "Max"
    ) is not None else None


def _scaling_event(raw: Json) -> ScalingEvent:
    meta = {str(k): str(v) for k, v in (raw.get("Meta") or {}).items()}
    count = raw.get("Count")
    return ScalingEvent(
        time=raw.get("Time", 0) / _NS,
        count=None if count is None else int(count),
        previous_count=int(raw.get("PreviousCount", 0)),
        message=str(raw.get("Message", "")),
        meta=meta,
    )


def _refusal(status: int, message: str) -> Refusal:
    if status == 404 or "does not exist in job" in message:
        return Refusal.UNKNOWN_GROUP
    if "active deployment" in message:
        return Refusal.DEPLOYMENT_ACTIVE
    if "scaling policy minimum" in message or "scaling policy maximum" in message:
        return Refusal.OUT_OF_BOUNDS
    return Refusal.REJECTED


def _placement_failure(task_group: str, evaluations: list[Json]) -> str:
    """Why the latest scheduling of the job could not place ``task_group``; "" if it could.

    The latest evaluation that ran the scheduler (``complete`` or ``blocked``)
    speaks for the job: a newer successful one supersedes an older blocked one,
    which Nomad leaves ``blocked`` after it stops tracking it.
    """
    ran = [e for e in evaluations if e.get("Status") in ("complete", "blocked")]
    if not ran:
        return ""
    latest = max(ran, key=lambda e: (e.get("ModifyIndex", 0), e.get("Status") == "blocked"))
    metric = (latest.get("FailedTGAllocs") or {}).get(task_group)
    if not metric:
        return ""
    blocked = latest["ID"] if latest.get("Status") == "blocked" else latest.get("BlockedEval", "")
    suffix = f" (blocked evaluation {blocked[:8]})" if blocked else ""
    return describe_placement_failure(metric) + suffix


def describe_placement_failure(metric: Mapping[str, Any]) -> str:
    """A Nomad ``AllocMetric`` from ``FailedTGAllocs`` in words, like ``nomad job status``."""
    unplaced = 1 + int(metric.get("CoalescedFailures") or 0)
    parts: list[str] = []
    if not metric.get("NodesEvaluated"):
        parts.append(f"no eligible node among {metric.get('NodesInPool', 0)} in the node pool")
    for what, n in sorted((metric.get("ConstraintFiltered") or {}).items()):
        parts.append(f"constraint {what!r} filtered {n} node(s)")
    for what, n in sorted((metric.get("DimensionExhausted") or {}).items()):
        parts.append(f"dimension {what!r} exhausted on {n} node(s)")
    return f"{unplaced} allocation(s) not placed: " + "; ".join(parts or ["no detail"])


def _leaving_reason(node: Json) -> tuple[str, float | None]:
    """Why a node's allocations are going away, and the drain's force deadline if any.

    ``Deadline`` < 0 is a force drain: its allocations stop at once, and Nomad
    leaves ``ForceDeadline`` at the zero time, so the deadline is ``StartedAt``.
    """
    strategy = node.get("DrainStrategy")
    if strategy:
        forced = int(strategy.get("Deadline") or 0) < 0
        deadline = _go_time(strategy.get("StartedAt" if forced else "ForceDeadline"))
        return ("node draining", deadline)
    if node.get("Status") not in ("ready", None):
        return (f"node {node.get('Status')}", None)
    return ("node ineligible", None)


def _go_time(value: Any) -> float | None:
    """A Go ``time.Time`` in JSON (RFC 3339, up to 9 fractional digits) in epoch seconds.

    The zero time (``0001-01-01T00:00:00Z``, a drain without deadline) gives ``None``.
    """
    if not isinstance(value, str) or value.startswith("0001-01-01"):
        return None
    head, _, rest = value.partition(".")
    if rest:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        value = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
