"""The gRPC ``voxmesh.autoscaler.v1.AutoscalerService``: status, decision stream, pause/resume.

A thin layer over :class:`~services.autoscaler.loop.EvaluationLoop`: it converts the
loop's views and records to protobuf messages. Errors go through
:func:`voxmesh.rpc.status.aborting` (an unknown pool is NOT_FOUND).

Only the leader applies decisions, so only the leader takes PausePool and ResumePool: a
standby answers FAILED_PRECONDITION. A pause lives in the leader's memory; a new leader
(failover, restart) does not know it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from services.autoscaler.loop import EvaluationLoop
from services.autoscaler.records import DecisionRecord, GroupView, Kind, Outcome, Phase, PoolView
from services.autoscaler.targets.base import CapacityClass
from voxmesh import errors
from voxmesh.autoscaler.v1 import autoscaler_pb2 as pb
from voxmesh.autoscaler.v1 import autoscaler_pb2_grpc
from voxmesh.rpc.status import aborting
from voxmesh.rpc.wellknown import duration, timestamp

__all__ = ["AutoscalerServicer", "decision_message", "pool_message"]

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

_PHASES = {
    Phase.IDLE: pb.LOOP_PHASE_IDLE,
    Phase.SCALING: pb.LOOP_PHASE_SCALING,
    Phase.COOLDOWN: pb.LOOP_PHASE_COOLDOWN,
}
_CLASSES = {
    CapacityClass.ON_DEMAND: pb.CAPACITY_CLASS_ON_DEMAND,
    CapacityClass.PREEMPTIBLE: pb.CAPACITY_CLASS_PREEMPTIBLE,
}
_KINDS = {
    Kind.SCALE: pb.DECISION_KIND_SCALE,
    Kind.HOLD: pb.DECISION_KIND_HOLD,
    Kind.ADOPT: pb.DECISION_KIND_ADOPT,
}
_OUTCOMES = {
    Outcome.NO_CHANGE: pb.ACTION_OUTCOME_NO_CHANGE,
    Outcome.APPLIED: pb.ACTION_OUTCOME_APPLIED,
    Outcome.UNCHANGED: pb.ACTION_OUTCOME_UNCHANGED,
    Outcome.REFUSED: pb.ACTION_OUTCOME_REFUSED,
    Outcome.DEFERRED: pb.ACTION_OUTCOME_DEFERRED,
    Outcome.PAUSED: pb.ACTION_OUTCOME_PAUSED,
    Outcome.DRY_RUN: pb.ACTION_OUTCOME_DRY_RUN,
    Outcome.FAILED: pb.ACTION_OUTCOME_FAILED,
}


class AutoscalerServicer(autoscaler_pb2_grpc.AutoscalerServiceServicer):
    """Serves one replica's loop."""

    def __init__(self, loop: EvaluationLoop, *, replica_id: str, target: str) -> None:
        self._loop = loop
        self._replica_id = replica_id
        self._target = target

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        """See the proto."""
        async with aborting(context):
            views = [self._loop.view(request.pool)] if request.pool else self._loop.views()
        response = pb.GetStatusResponse(
            replica_id=self._replica_id,
            role=pb.REPLICA_ROLE_LEADER if self._loop.is_leader else pb.REPLICA_ROLE_STANDBY,
            dry_run=self._loop.dry_run,
            target=self._target,
            pools=[pool_message(view) for view in views],
        )
        response.time.GetCurrentTime()
        return response

    async def WatchDecisions(
        self, request: pb.WatchDecisionsRequest, context: Context
    ) -> AsyncIterator[pb.WatchDecisionsResponse]:
        """See the proto."""
        async with aborting(context):
            if request.pool:
                self._loop.view(request.pool)
            if request.replay < 0:
                raise errors.InvalidArgument("replay must not be negative")
        async for record in self._loop.log.watch(request.pool or None, request.replay):
            yield pb.WatchDecisionsResponse(decision=decision_message(record))

    async def PausePool(
        self, request: pb.PausePoolRequest, context: Context
    ) -> pb.PausePoolResponse:
        """See the proto."""
        async with aborting(context):
            self._loop.view(request.pool)  # NOT_FOUND first: it holds on every replica
        await self._refuse_unless_leading(context, "pause")
        async with aborting(context):
            view = self._loop.pause(request.pool, request.reason)
        return pb.PausePoolResponse(pool=pool_message(view))

    async def ResumePool(
        self, request: pb.ResumePoolRequest, context: Context
    ) -> pb.ResumePoolResponse:
        """See the proto."""
        async with aborting(context):
            self._loop.view(request.pool)
        await self._refuse_unless_leading(context, "resume")
        async with aborting(context):
            view = self._loop.resume(request.pool)
        return pb.ResumePoolResponse(pool=pool_message(view))

    async def _refuse_unless_leading(self, context: Context, verb: str) -> None:
        """Ends the RPC with FAILED_PRECONDITION on a standby: it applies nothing, so a pause
        it took would only say ``paused`` while the leader goes on scaling."""
        if self._loop.is_leader:
            return
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{self._replica_id} is a standby and applies no decisions: {verb} the pool on the "
            "leader (GetStatus answers REPLICA_ROLE_LEADER there)",
        )


def pool_message(view: PoolView) -> pb.PoolStatus:
    """A pool's view as a ``PoolStatus``."""
    message = pb.PoolStatus(
        pool=view.pool,
        phase=_PHASES[view.phase],
        paused=view.paused,
        pause_reason=view.pause_reason,
        groups=[_group_message(g) for g in view.groups],
        recent_decisions=[decision_message(r) for r in view.recent],
    )
    if view.load is not None:
        load = view.load
        message.signals.CopyFrom(
            pb.SignalSummary(
                active_streams=load.active_streams,
                queued_realtime=load.queued_realtime,
                queued_batch=load.queued_batch,
                max_streams=view.max_streams,
                age=duration(load.age_s),
                missing_reason=load.missing,
                oldest_wait=duration(load.oldest_wait_s),
            )
        )
    if view.evaluated_at is not None:
        message.evaluated_time.CopyFrom(timestamp(view.evaluated_at))
    return message


def decision_message(record: DecisionRecord) -> pb.Decision:
    """A decision record as a ``Decision``."""
    return pb.Decision(
        sequence=record.sequence,
        time=timestamp(record.time),
        pool=record.pool,
        kind=_KINDS[record.kind],
        reason=record.reason,
        actions=[
            pb.GroupAction(
                group=a.group,
                capacity_class=_CLASSES[a.capacity_class],
                current=a.current,
                desired=a.desired,
                drain=a.drain,
                outcome=_OUTCOMES[a.outcome],
                detail=a.detail,
            )
            for a in record.actions
        ],
    )


def _group_message(view: GroupView) -> pb.GroupStatus:
    return pb.GroupStatus(
        group=view.group,
        capacity_class=_CLASSES[view.capacity_class],
        target_count=view.target_count,
        desired=view.desired,
        serving=view.serving,
        starting=view.starting,
        draining=view.draining,
        reclaiming=view.reclaiming,
        min_count=view.min_count,
        max_count=view.max_count,
        placement_failing=view.placement_failing,
        placement_reason=view.placement_reason,
    )
