"""The router's view of one instance: when it is a last resort (no sockets used)."""

from __future__ import annotations

import grpc

from services.router.membership import Member
from voxmesh.discovery import InstanceInfo
from voxmesh.rpc.metadata import LAST_RESORT_KEY
from voxmesh.stt.v1 import stt_pb2


def _snapshot(state: int, drain_s: float | None = None) -> stt_pb2.TelemetrySnapshot:
    snap = stt_pb2.TelemetrySnapshot(state=state, max_streams=2)  # type: ignore[arg-type]
    if drain_s is not None:
        snap.drain_remaining.FromMilliseconds(round(drain_s * 1000))
    return snap


async def test_a_draining_member_is_a_last_resort_while_its_drain_has_time_left() -> None:
    now = [100.0]
    info = InstanceInfo("a", "asr_small", "tiny.en", "127.0.0.1", 1, max_streams=2)
    channel = grpc.aio.insecure_channel(info.target)  # never connected
    try:
        member = Member(info, channel, lambda: None, lambda: now[0], last_resort_min_drain_s=30)
        member.update(_snapshot(stt_pb2.SERVING_STATE_SERVING))
        assert member.accepting() and not member.last_resort() and not member.draining()
        assert member.open_metadata() == ()

        member.update(_snapshot(stt_pb2.SERVING_STATE_DRAINING, drain_s=45))
        assert not member.accepting() and member.draining() and member.last_resort()
        assert member.open_metadata() == ((LAST_RESORT_KEY, "1"),)
        now[0] += 14.0  # 31 s left: still
        assert member.last_resort()
        now[0] += 2.0  # 29 s left: no longer
        assert not member.last_resort()

        member.update(_snapshot(stt_pb2.SERVING_STATE_DRAINING))  # unbounded drain
        assert member.draining() and not member.last_resort()
        member.update(_snapshot(stt_pb2.SERVING_STATE_DRAINING, drain_s=60))
        member.mark_failed()
        assert not member.last_resort(), "unreachable"

        off = Member(info, channel, lambda: None, lambda: now[0])  # the default: no last resort
        off.update(_snapshot(stt_pb2.SERVING_STATE_DRAINING, drain_s=600))
        assert off.draining() and not off.last_resort()
    finally:
        await channel.close()


async def test_a_refused_stream_leaves_the_member_full_when_the_queue_is_told() -> None:
    info = InstanceInfo("a", "asr_small", "tiny.en", "127.0.0.1", 1, max_streams=2)
    channel = grpc.aio.insecure_channel(info.target)  # never connected
    room_when_told: list[bool] = []
    members: list[Member] = []
    try:
        member = Member(info, channel, lambda: room_when_told.append(members[0].has_room()))
        members.append(member)
        member.update(_snapshot(stt_pb2.SERVING_STATE_SERVING))
        member.reserve()
        member.release(full=True)  # the instance answered RESOURCE_EXHAUSTED
        assert room_when_told == [True, False], "the queue was told before it was full"
        assert not member.has_room() and member.inflight == 0
        member.reserve()
        member.release()  # another stream left it: there is room again
        assert member.has_room()
        member.reserve()
        member.release(full=True)
        member.update(_snapshot(stt_pb2.SERVING_STATE_SERVING))  # it reports again
        assert room_when_told == [True, False, True, False, True] and member.has_room()
    finally:
        await channel.close()


async def test_a_member_whose_telemetry_falls_silent_takes_no_new_streams() -> None:
    # A peer gone without a reset (a partition) sends nothing and nothing says so.
    now = [100.0]
    info = InstanceInfo("a", "asr_small", "tiny.en", "127.0.0.1", 1, max_streams=2)
    channel = grpc.aio.insecure_channel(info.target)  # never connected
    try:
        member = Member(info, channel, lambda: None, lambda: now[0], stale_after_s=5.0)
        member.update(_snapshot(stt_pb2.SERVING_STATE_SERVING))
        now[0] += 5.0
        assert member.accepting()
        now[0] += 0.1
        assert not member.accepting(), "silent for more than 5 s"
        member.update(_snapshot(stt_pb2.SERVING_STATE_SERVING))
        assert member.accepting()
    finally:
        await channel.close()
