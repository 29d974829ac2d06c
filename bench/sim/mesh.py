"""The discrete-event model of one pool: instances, the router's admission queue, preemptible
capacity and billing. Deterministic: no randomness inside, ties broken by insertion order.

Instance life cycle (per capacity group)::

    request ─> UNPLACED (preemptible without capacity; not billed)
       │            │ capacity appears
       └────────────┴─> STARTING (billed) ── lead time ──> SERVING ── drain ──> DRAINING
                              │                               │                    │ empty
                              └── reclaim notice ──> RECLAIMING <──────────────────┤
                                                         │ notice over             v
                                                         └──────────────────────> GONE

Streams: an arrival takes the least-loaded serving instance with a free slot, or waits in
the router's FIFO queue; after ``max_wait_s`` in the queue it is dropped. Streams on a
reclaimed instance are interrupted and re-queued ahead of new ones; one not resumed within
``max_wait_s`` is "dropped by preemption". A stream meets the SLO when its admission wait and
every resume wait are at most ``slo_wait_s``.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import deque
from dataclasses import dataclass

from bench.sim.availability import AvailabilityTrace
from bench.sim.calibration import Calibration
from bench.sim.control import GroupActions, GroupView, MeshView
from bench.sim.record import RunRecord, Series
from bench.sim.workload import Workload

__all__ = ["OD", "PE", "Mesh", "MeshParams"]

OD, PE = 0, 1
_DEPART, _READY, _KILL, _OVERFLOW_END = 0, 1, 2, 3


class State(enum.Enum):
    """Where an instance is in its life cycle (see the module docstring)."""

    UNPLACED = "unplaced"
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    RECLAIMING = "reclaiming"
    GONE = "gone"


@dataclass(frozen=True)
class MeshParams:
    """The simulated mesh's parameters besides the workload and availability."""

    calibration: Calibration
    """Capacity and timings."""
    max_wait_s: float = 30.0
    """Router admission queue limit: a stream waiting longer is dropped."""
    slo_wait_s: float = 1.0
    """Admission (and resume) wait that still meets the SLO."""
    preemption_notice_s: float = 120.0
    """Warning between a reclaim notice and the instance vanishing (AWS: 2 min, the cloud
    SkyPilot's V100 traces come from; GCP and Azure: 30 s)."""
    overflow_window_s: float = 0.0
    """How long after a preemption notice an instance still takes a *new* stream when no
    other slot is free: the router's opt-in last resort (``services/router/balancer.py``)
    uses a draining instance while at least ``last_resort_min_drain_s`` (30 s) of its drain
    is left, and the preemptible jobs drain for 100 s, so 70 s. 0 (the router's default):
    such instances only drain."""
    on_demand_price: float = 1.0
    """Price of an on-demand GPU-hour, in units."""
    preemptible_price: float = 0.35
    """Price of a preemptible GPU-hour, in units."""
    sample_s: float = 60.0
    """Time-series resolution for the plots."""
    tail_s: float = 300.0
    """The run ends this long after the last arrival."""
    warmup_s: float = 120.0
    """Controllers first evaluate at this time: the mesh starts with the initial fleet but
    no stream yet, and no autoscaler should act on that artificial empty start."""


class Instance:
    """One ASR instance."""

    __slots__ = (
        "active",
        "group",
        "iid",
        "overflow_until",
        "placed_at",
        "requested_at",
        "state",
        "streams",
    )

    def __init__(self, iid: int, group: int, now: float) -> None:
        self.iid = iid
        self.group = group
        self.state = State.UNPLACED
        self.active = 0
        self.streams: set[int] = set()
        self.requested_at = now
        self.placed_at: float | None = None
        self.overflow_until = 0.0


class Mesh:
    """Mutable simulation state and its event handlers (driven by ``bench.sim.engine``)."""

    def __init__(self, workload: Workload, avail: AvailabilityTrace, params: MeshParams) -> None:
        cal = params.calibration
        self.p, self.avail, self.cap = params, avail, cal.max_streams
        self.lead = (cal.on_demand_lead_s, cal.preemptible_lead_s)
        self.arrivals, self.durations = workload.arrivals, workload.durations
        self.ids = itertools.count()
        self.heap: list[tuple[float, int, int, int]] = []
        self.by_state: tuple[dict[State, dict[int, Instance]], ...] = tuple(
            {state: {} for state in State} for _ in (OD, PE)
        )
        self.buckets: list[dict[int, Instance]] = [{} for _ in range(self.cap)]
        self.free_slots = 0
        self.overflow: dict[int, Instance] = {}
        self.new_queue: deque[tuple[float, int]] = deque()
        self.resume_queue: deque[tuple[float, int, float, float]] = deque()
        self.where: dict[int, Instance] = {}
        self.ends: dict[int, float] = {}
        self.tokens: dict[int, int] = {}
        self.record = RunRecord(arrivals=len(self.arrivals), missed=bytearray(len(self.arrivals)))
        self.cold_since: float | None = None

    # -- instances ---------------------------------------------------------------------------

    def _move(self, inst: Instance, state: State, now: float) -> None:
        groups = self.by_state[inst.group]
        served = inst.state in (State.SERVING, State.DRAINING)
        del groups[inst.state][inst.iid]
        if inst.state is State.SERVING and inst.active < self.cap:
            del self.buckets[inst.active][inst.iid]
            self.free_slots -= self.cap - inst.active
        if inst.state is State.RECLAIMING:
            self.overflow.pop(inst.iid, None)
        inst.state = state
        groups[state][inst.iid] = inst
        if state is State.RECLAIMING and served and self.p.overflow_window_s > 0:
            # A started instance, draining or not, may take a last-resort stream; one
            # still starting never serves before it vanishes.
            inst.overflow_until = now + self.p.overflow_window_s
            self._push(inst.overflow_until, _OVERFLOW_END, inst.iid)
            if inst.active < self.cap:
                self.overflow[inst.iid] = inst
        if state is State.SERVING:
            self.buckets[inst.active][inst.iid] = inst
            self.free_slots += self.cap - inst.active
        elif state is State.GONE and inst.placed_at is not None:
            self.record.instance_hours[inst.group] += (now - inst.placed_at) / 3600.0
            del groups[State.GONE][inst.iid]

    def _place(self, inst: Instance, now: float) -> None:
        inst.placed_at = now
        self._move(inst, State.STARTING, now)
        self._push(now + self.lead[inst.group], _READY, inst.iid)

    def _claimed_preemptible(self) -> int:
        groups = self.by_state[PE]
        return sum(len(groups[s]) for s in (State.STARTING, State.SERVING, State.DRAINING))

    def start(self, group: int, count: int, now: float, *, serving: bool = False) -> None:
        """Request ``count`` instances (or, at time 0, put them straight into service)."""
        for _ in range(count):
            inst = Instance(next(self.ids), group, now)
            self.by_state[group][State.UNPLACED][inst.iid] = inst
            if serving:
                inst.placed_at = now
                self._move(inst, State.SERVING, now)
            elif group == OD or self._claimed_preemptible() < self.avail.at(now):
                self._place(inst, now)

    def apply(self, group: int, actions: GroupActions, now: float) -> None:
        """Start, cancel and drain instances of one group as a controller asked."""
        self.start(group, actions.start, now)
        states = self.by_state[group]
        pending = [*states[State.STARTING].values(), *states[State.UNPLACED].values()]
        pending.sort(key=lambda inst: (inst.state is State.UNPLACED, inst.requested_at))
        for inst in pending[::-1][: actions.cancel]:
            self._move(inst, State.GONE, now)
        serving = sorted(states[State.SERVING].values(), key=lambda inst: inst.active)
        for inst in serving[: actions.drain]:
            self._move(inst, State.DRAINING if inst.active else State.GONE, now)
        self._place_waiting(now)

    def _place_waiting(self, now: float) -> None:
        free = self.avail.at(now) - self._claimed_preemptible()
        for inst in list(self.by_state[PE][State.UNPLACED].values())[: max(0, free)]:
            self._place(inst, now)

    def availability_tick(self, now: float) -> None:
        """Reclaim preemptible instances beyond the capacity now available; place waiting
        requests where capacity appeared."""
        excess = self._claimed_preemptible() - self.avail.at(now)
        if excess > 0:
            states = self.by_state[PE]
            held = [*states[State.STARTING].values(), *states[State.SERVING].values()]
            held += states[State.DRAINING].values()
            held.sort(key=lambda inst: inst.placed_at or 0.0, reverse=True)
            for inst in held[:excess]:
                self._move(inst, State.RECLAIMING, now)
                self._push(now + self.p.preemption_notice_s, _KILL, inst.iid)
        self._place_waiting(now)

    # -- streams -----------------------------------------------------------------------------

    def _push(self, at: float, kind: int, payload: int) -> int:
        seq = next(self.ids)
        heapq.heappush(self.heap, (at, seq, kind, payload))
        return seq

    def _assign(self, sid: int, now: float, remaining: float) -> None:
        """Give ``sid`` the least-loaded serving instance, else an overflow instance."""
        if self.free_slots:
            bucket = next(b for b in self.buckets if b)
            iid = next(iter(bucket))
            inst = bucket.pop(iid)
            inst.active += 1
            if inst.active < self.cap:
                self.buckets[inst.active][iid] = inst
            self.free_slots -= 1
        else:
            inst = next(iter(self.overflow.values()))
            inst.active += 1
            if inst.active == self.cap:
                del self.overflow[inst.iid]
        inst.streams.add(sid)
        self.where[sid] = inst
        self.ends[sid] = now + remaining
        self.tokens[sid] = self._push(now + remaining, _DEPART, sid)

    def _expire(self, now: float) -> None:
        record, limit = self.record, self.p.max_wait_s
        while self.new_queue and self.new_queue[0][0] < now:
            _, sid = self.new_queue.popleft()
            record.dropped_waiting += 1
            record.missed[sid] = 1
            record.waits.append(limit)
        while self.resume_queue and self.resume_queue[0][0] < now:
            _, sid, _, _ = self.resume_queue.popleft()
            record.dropped_preemption += 1
            record.missed[sid] = 1

    def admit(self, now: float) -> None:
        """Expire old waiters, then give free slots to interrupted streams, then new ones."""
        self._expire(now)
        record, slo = self.record, self.p.slo_wait_s
        while self.free_slots and self.resume_queue:
            _, sid, remaining, since = self.resume_queue.popleft()
            if now - since > slo:
                record.missed[sid] = 1
            record.resumed += 1
            self._assign(sid, now, remaining)
        while self.new_queue and (self.free_slots or self.overflow):
            _, sid = self.new_queue.popleft()
            wait = now - self.arrivals[sid]
            record.waits.append(wait)
            if wait > slo:
                record.missed[sid] = 1
            record.admitted += 1
            self._assign(sid, now, self.durations[sid])

    def arrive(self, sid: int, now: float) -> None:
        """A new stream asks for a slot."""
        if (self.free_slots or self.overflow) and not self.resume_queue and not self.new_queue:
            self.record.admitted += 1
            self._assign(sid, now, self.durations[sid])
            return
        if self.cold_since is None and not (
            self.by_state[OD][State.SERVING] or self.by_state[PE][State.SERVING]
        ):
            self.cold_since = now
        self.new_queue.append((now + self.p.max_wait_s, sid))
        self._expire(now)

    def event(self, now: float, seq: int, kind: int, payload: int) -> None:
        """A departure, an instance becoming SERVING, or a reclaimed instance vanishing."""
        if kind == _DEPART:
            if self.tokens.get(payload) != seq:
                return
            del self.tokens[payload], self.ends[payload]
            inst = self.where.pop(payload)
            inst.streams.discard(payload)
            if inst.state is State.SERVING:
                if inst.active < self.cap:
                    del self.buckets[inst.active][inst.iid]
                inst.active -= 1
                self.buckets[inst.active][inst.iid] = inst
                self.free_slots += 1
            else:
                inst.active -= 1
                if inst.state is State.DRAINING and not inst.active:
                    self._move(inst, State.GONE, now)
                elif inst.state is State.RECLAIMING and now < inst.overflow_until:
                    self.overflow[inst.iid] = inst
        else:
            starting = self.by_state[OD][State.STARTING].get(payload)
            if starting is None:
                starting = self.by_state[PE][State.STARTING].get(payload)
            if kind == _READY and starting is not None:
                self._move(starting, State.SERVING, now)
                if self.cold_since is not None:
                    self.record.cold_starts.append(now - self.cold_since)
                    self.cold_since = None
            elif kind == _KILL:
                self._kill(payload, now)
            elif kind == _OVERFLOW_END:
                self.overflow.pop(payload, None)
        self.admit(now)

    def _kill(self, iid: int, now: float) -> None:
        inst = self.by_state[PE][State.RECLAIMING].get(iid)
        if inst is None:
            return
        for sid in sorted(inst.streams):
            remaining = self.ends.pop(sid) - now
            del self.tokens[sid], self.where[sid]
            self.resume_queue.append((now + self.p.max_wait_s, sid, remaining, now))
            self.record.interrupted += 1
        inst.streams.clear()
        inst.active = 0
        self._move(inst, State.GONE, now)

    # -- observation -------------------------------------------------------------------------

    def view(self, now: float) -> MeshView:
        """What a controller sees now."""
        self._expire(now)
        groups = []
        for states in self.by_state:
            waiting = [*states[State.STARTING].values(), *states[State.UNPLACED].values()]
            groups.append(
                GroupView(
                    serving=len(states[State.SERVING]),
                    starting=len(waiting),
                    unplaced=len(states[State.UNPLACED]),
                    draining=len(states[State.DRAINING]),
                    reclaiming=len(states[State.RECLAIMING]),
                    oldest_starting_s=max((now - i.requested_at for i in waiting), default=0.0),
                    serving_loads=tuple(i.active for i in states[State.SERVING].values()),
                )
            )
        return MeshView(
            now=now,
            max_streams=self.cap,
            active_streams=len(self.where),
            queued=len(self.new_queue) + len(self.resume_queue),
            on_demand=groups[OD],
            preemptible=groups[PE],
        )

    def sample(self, series: Series, now: float) -> None:
        """Append one point of the plotted time series."""
        self._expire(now)
        queued = len(self.new_queue) + len(self.resume_queue)
        series.t.append(now)
        series.demand.append(len(self.where) + queued)
        series.queued.append(queued)
        series.on_demand_slots.append(len(self.by_state[OD][State.SERVING]) * self.cap)
        series.preemptible_slots.append(len(self.by_state[PE][State.SERVING]) * self.cap)

    def close(self, now: float) -> None:
        """Bill every instance still held at the end of the run."""
        for states in self.by_state:
            for state in (State.STARTING, State.SERVING, State.DRAINING, State.RECLAIMING):
                for inst in list(states[state].values()):
                    self._move(inst, State.GONE, now)
