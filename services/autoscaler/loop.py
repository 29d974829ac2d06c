"""The one evaluation loop: it owns time, the leader lock, cooldowns, pause and dry-run.

Every ``interval_s`` the leader reads the target's groups and each pool's signals, asks
the pure policy (:func:`services.autoscaler.policy.decide`) for a decision and applies it
through the target. Every decision's reason goes to the log, to the decision records
(the gRPC stream) and to the metrics.

Replica roles (only the leader evaluates; a standby computes nothing)::

    STANDBY --(lock acquired)--> LEADER --(lock lost: hold() returned)--> STANDBY

Per pool, a state machine (:class:`~services.autoscaler.records.Phase`)::

                  a change applied
      +------+ ----------------------> +---------+ <--+
      | IDLE |                        | SCALING |    | a scale-up applied
      +------+ <--+                   +---------+ ---+
                  |                        |
                  | cooldown over          | settled (nothing starting or draining,
                  |                        | except where placements fail or are
                  |                        | past their deadline), or
                  |   +----------+         | scaling_timeout passed
                  +-- | COOLDOWN | <-------+
                      +----------+ --(a scale-up applied)--> SCALING

Scale-ups are applied in every phase; a scale-down only in IDLE (otherwise DEFERRED).
Missing or stale signals, an unreachable target and an error while evaluating a pool make
the pool hold (an error in one pool holds that pool only), and each restarts the pool's
observation: nothing shrinks before a whole stabilisation window of fresh signals has been
seen again. Only an applied scale-up starts the policy's scale-up cooldown. A count
changed by somebody else (the target reports it) is adopted, recorded and logged; the
pool's policy state restarts, and for one stabilisation window after the change was made
(dated by the target: a new leader adopting an old change holds back only what is left of
it) no group moves against it
(:func:`~services.autoscaler.policy.respect_manual_change`: after a scale-down, the
pool grows only while real-time streams queue); changes to both groups each stand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from services.autoscaler import observe
from services.autoscaler.leadership import run_elected
from services.autoscaler.metrics import AutoscalerMetrics
from services.autoscaler.policy import (
    CapacityGroup,
    Decision,
    GroupDecision,
    ManualChange,
    PolicyState,
    PoolPolicy,
    PoolSignals,
    decide,
    hold,
    respect_manual_change,
)
from services.autoscaler.records import (
    DecisionLog,
    GroupAction,
    GroupView,
    Kind,
    Outcome,
    Phase,
    PoolView,
)
from services.autoscaler.signals.base import PoolLoad, SignalSource
from services.autoscaler.targets.base import (
    CapacityClass,
    GroupStatus,
    ScaleOutcome,
    ScaleTarget,
    TargetUnavailable,
    group_name,
)
from voxmesh.errors import NotFound
from voxmesh.leader import LeaderLock

__all__ = ["EvaluationLoop", "LoopConfig", "PoolSpec"]

logger = logging.getLogger(__name__)

_GROUPS = (
    (CapacityGroup.ON_DEMAND, CapacityClass.ON_DEMAND),
    (CapacityGroup.PREEMPTIBLE, CapacityClass.PREEMPTIBLE),
)
_RECENT = 10
"""Decision records shown per pool in a status."""


@dataclass(frozen=True)
class PoolSpec:
    """One managed pool."""

    name: str
    """The pool (``asr_small``)."""
    policy: PoolPolicy = field(default_factory=PoolPolicy)
    """Its scaling policy (the target's bounds narrow it further)."""
    fallback_max_streams: int = 3
    """Per-instance stream limit assumed while no instance reports its own."""


@dataclass(frozen=True)
class LoopConfig:
    """How the loop runs."""

    pools: tuple[PoolSpec, ...]
    """The pools, in status order."""
    interval_s: float = 1.0
    """Seconds between evaluations."""
    cooldown_s: float = 30.0
    """After a change settled, how long scale-downs wait."""
    scaling_timeout_s: float = 300.0
    """A change not settled after this long stops blocking scale-downs."""
    leader_retry_s: float = 5.0
    """How often a standby tries to take the leader lock."""
    dry_run: bool = False
    """Compute and record decisions without applying them."""
    jitter: float = 0.1
    """Share by which intervals vary, so that replicas do not evaluate in step."""


@dataclass
class _Pool:
    """The loop's memory of one pool."""

    spec: PoolSpec
    state: PolicyState = field(default_factory=PolicyState)
    phase: Phase = Phase.IDLE
    phase_since: float = 0.0
    paused: bool = False
    pause_reason: str = ""
    load: PoolLoad | None = None
    max_streams: int = 0
    groups: tuple[GroupView, ...] = ()
    evaluated_at: float | None = None
    starting: dict[CapacityGroup, observe.StartingSince] = field(default_factory=dict)
    adopted: dict[str, tuple[float, int | None]] = field(default_factory=dict)
    manual: dict[str, ManualChange] = field(default_factory=dict)
    """The count changes somebody else made to each group, while they stand."""

    def unobserved(self) -> None:
        """Restarts the policy's observation: this evaluation did not see the pool."""
        self.state = replace(self.state, observing_since=None)


class EvaluationLoop:
    """Evaluates every pool while this replica leads: ``await run()``, ``await shutdown()``."""

    def __init__(
        self,
        config: LoopConfig,
        source: SignalSource,
        target: ScaleTarget,
        lock: LeaderLock,
        *,
        metrics: AutoscalerMetrics | None = None,
        log: DecisionLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        """``clock`` times the policy; ``wall_clock`` (seconds since the epoch) dates the
        target's scaling events."""
        self._config = config
        self._source, self._target, self._lock = source, target, lock
        self._metrics = metrics or AutoscalerMetrics()
        self.log = log or DecisionLog()
        self._clock, self._wall = clock, wall_clock
        self._rng = rng or random.Random()
        self._pools = {spec.name: _Pool(spec) for spec in config.pools}
        self._leader = False
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False

    @property
    def is_leader(self) -> bool:
        """True while this replica leads (evaluates and applies)."""
        return self._leader

    @property
    def dry_run(self) -> bool:
        """True when decisions are never applied."""
        return self._config.dry_run

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Campaigns for the lock, evaluates while leading, stands by otherwise."""
        if self._running:
            return
        self._running = True
        try:
            await run_elected(
                self._lock,
                self._evaluate_forever,
                self._stop,
                retry_s=self._config.leader_retry_s,
                on_change=self._set_leader,
            )
        finally:
            self._finished.set()

    async def shutdown(self, timeout_s: float = 30.0) -> None:
        """Finishes the evaluation in flight, releases the lock, ends watches. Idempotent."""
        self._stop.set()
        if self._running:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._finished.wait()
            except TimeoutError:
                logger.warning("evaluation loop did not stop within %g s", timeout_s)
        self.log.close()

    async def _evaluate_forever(self) -> None:
        while not self._stop.is_set():
            try:
                await self.evaluate_once()
            except Exception:
                logger.exception("evaluation failed; trying again next interval")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval()):
                    await self._stop.wait()

    def _interval(self) -> float:
        spread = self._config.jitter * (2 * self._rng.random() - 1)
        return self._config.interval_s * (1 + spread)

    def _set_leader(self, leader: bool) -> None:
        if leader and not self._leader:
            logger.info(
                "leading: evaluating %s every %g s", ", ".join(self._pools), self._config.interval_s
            )
        if not leader and self._leader:  # a future leader starts from fresh state
            for name, pool in self._pools.items():
                self._pools[name] = _Pool(
                    pool.spec, paused=pool.paused, pause_reason=pool.pause_reason
                )
                self.log.forget(name)
        self._leader = leader
        self._metrics.leader.set(1 if leader else 0)

    # ---------------------------------------------------------------- operators

    def pause(self, pool: str, reason: str = "") -> PoolView:
        """Stops applying decisions to ``pool``; raises NotFound for an unknown pool."""
        state = self._pool(pool)
        state.paused, state.pause_reason = True, reason or "paused by an operator"
        self._metrics.paused.labels(pool).set(1)
        logger.warning("pool %s paused: %s", pool, state.pause_reason)
        return self.view(pool)

    def resume(self, pool: str) -> PoolView:
        """Applies decisions to ``pool`` again; raises NotFound for an unknown pool."""
        state = self._pool(pool)
        if state.paused:
            logger.warning("pool %s resumed", pool)
        state.paused, state.pause_reason = False, ""
        self._metrics.paused.labels(pool).set(0)
        return self.view(pool)

    def view(self, pool: str) -> PoolView:
        """One pool's state; raises NotFound for an unknown pool."""
        state = self._pool(pool)
        return PoolView(
            pool=pool,
            phase=state.phase,
            paused=state.paused,
            pause_reason=state.pause_reason,
            load=state.load,
            max_streams=state.max_streams,
            groups=state.groups,
            recent=tuple(self.log.recent(pool, _RECENT)),
            evaluated_at=state.evaluated_at,
        )

    def views(self) -> list[PoolView]:
        """Every pool's state, in settings order."""
        return [self.view(pool) for pool in self._pools]

    def _pool(self, pool: str) -> _Pool:
        state = self._pools.get(pool)
        if state is None:
            raise NotFound(f"pool {pool!r} is not managed here (managed: {', '.join(self._pools)})")
        return state

    # --------------------------------------------------------------- evaluation

    async def evaluate_once(self) -> None:
        """One evaluation of every pool (the leader's step; tests call it directly)."""
        now = self._clock()
        try:
            try:
                statuses = await self._target.status()
                reclaims = Counter(r.group for r in await self._target.reclaiming())
            except Exception as exc:  # unreachable, or an answer it could not read
                # Counted like a refused scale call: the pools cannot move while it
                # lasts (Nomad down, a token without read-job), and it alerts the same.
                if isinstance(exc, TargetUnavailable):
                    why = f"holding: the scale target is unavailable: {exc}"
                    self._metrics.refused.labels("target-unavailable").inc()
                else:
                    logger.exception("reading the scale target failed")
                    why = f"holding: reading the scale target failed ({type(exc).__name__}: {exc})"
                    self._metrics.refused.labels("error").inc()
                for pool in self._pools.values():
                    pool.unobserved()
                    self._record(pool, Kind.HOLD, why, ())
                return
            for pool in self._pools.values():
                try:
                    await self._evaluate(pool, statuses, reclaims, now)
                except Exception as exc:  # one pool's fault must not stop the others
                    pool.unobserved()
                    why = (
                        f"holding: the evaluation failed ({type(exc).__name__}: {exc}); "
                        "trying again next interval"
                    )
                    if self._record(pool, Kind.HOLD, why, ()):
                        logger.exception("%s: evaluation failed", pool.spec.name)
        finally:
            self._metrics.evaluation.observe(self._clock() - now)

    async def _evaluate(
        self, pool: _Pool, statuses: Mapping[str, GroupStatus], reclaims: Counter[str], now: float
    ) -> None:
        name = pool.spec.name
        status = {cg: statuses.get(group_name(name, cc)) for cg, cc in _GROUPS}
        for group_status in status.values():
            if group_status is not None:
                self._adopt(pool, group_status, now)
        load = self._source.read(name)
        seen = observe.observe_pool(
            pool.spec.policy,
            pool.spec.fallback_max_streams,
            load,
            status,
            reclaims,
            lambda cg, unseen: pool.starting.setdefault(cg, observe.StartingSince()).update(
                status[cg], now, unseen
            ),
        )
        signals, groups, policy = seen.signals, seen.groups, seen.policy
        before = pool.state
        if status[CapacityGroup.ON_DEMAND] is None:
            missing = group_name(name, CapacityClass.ON_DEMAND)
            decision = hold(signals, f"holding: the target has no group {missing}")
            pool.unobserved()
        elif load.missing:
            decision = hold(signals, f"holding: {load.missing} (missing signals never scale down)")
            pool.unobserved()
        else:
            decision, pool.state = decide(signals, pool.state, policy, now)
            window = policy.scale_down_window_s
            pool.manual = {g: c for g, c in pool.manual.items() if now - c.at < window}
            for change in pool.manual.values():
                decision = respect_manual_change(decision, signals, change, now, window)
        self._advance(pool, signals, policy, now)
        actions, counts = [], {}
        for cg, cc in _GROUPS:
            part, current = decision.group(cg), status[cg]
            outcome, detail, count = await self._act(pool, cc, current, part, decision.reason, now)
            if count is None:  # not applied (held back, refused or failed): the count stands
                count = current.desired if current else 0
            counts[cg] = count
            action = (group_name(name, cc), cc, part.current, part.desired, part.drain)
            actions.append(GroupAction(*action, outcome, detail))
        if any(a.outcome is Outcome.APPLIED for a in actions):
            pool.phase, pool.phase_since = Phase.SCALING, now
        if not any(a.outcome is Outcome.APPLIED and a.desired > a.current for a in actions):
            # Nothing was added (held back, refused, paused, dry run): nothing to settle, so
            # no scale-up cooldown starts.
            pool.state = replace(pool.state, last_scale_up_at=before.last_scale_up_at)
        pool.load, pool.max_streams, pool.evaluated_at = load, signals.max_streams, self._wall()
        pool.groups = tuple(
            observe.group_view(
                name,
                cc,
                status[cg],
                counts[cg],
                groups[cg],
                decision.group(cg),
                policy.limits(cg),
            )
            for cg, cc in _GROUPS
        )
        self._measure(pool, signals, load, decision)
        kind = Kind.SCALE if decision.changes else Kind.HOLD
        self._record(pool, kind, decision.reason, tuple(actions))

    def _advance(self, pool: _Pool, signals: PoolSignals, policy: PoolPolicy, now: float) -> None:
        """SCALING -> COOLDOWN once settled (or timed out); COOLDOWN -> IDLE when over.

        Instances that may never start do not keep a change settling: those of a group
        whose placements fail or whose oldest starting instance is past its placement
        deadline (a preemptible one has an on-demand stand-in by then)."""
        if pool.phase is Phase.SCALING:
            busy = [
                g
                for g, limits in (
                    (signals.on_demand, policy.on_demand),
                    (signals.preemptible, policy.preemptible),
                )
                if g.draining
                or (
                    g.starting
                    and not g.placement_failing
                    and g.oldest_starting_s <= limits.placement_deadline_s
                )
            ]
            timed_out = now - pool.phase_since >= self._config.scaling_timeout_s
            if timed_out and busy:
                logger.warning(
                    "pool %s: change not settled after %g s; scale-downs allowed again after "
                    "the cooldown",
                    pool.spec.name,
                    self._config.scaling_timeout_s,
                )
            if timed_out or not busy:
                pool.phase, pool.phase_since = Phase.COOLDOWN, now
        if pool.phase is Phase.COOLDOWN and now - pool.phase_since >= self._config.cooldown_s:
            pool.phase, pool.phase_since = Phase.IDLE, now

    async def _act(
        self,
        pool: _Pool,
        capacity_class: CapacityClass,
        status: GroupStatus | None,
        part: GroupDecision,
        reason: str,
        now: float,
    ) -> tuple[Outcome, str, int | None]:
        """Applies one group's part of a decision, unless something holds it back.

        Returns the outcome, its detail, and the count the target now has when it answered.
        """
        if part.delta == 0:
            return Outcome.NO_CHANGE, "", None
        if pool.paused:
            return self._refused(Outcome.PAUSED, "paused", f"paused: {pool.pause_reason}")
        if self._config.dry_run:
            return self._refused(Outcome.DRY_RUN, "dry-run", "dry run: not applied")
        if part.delta < 0 and pool.phase is not Phase.IDLE:
            if pool.phase is Phase.SCALING:
                why = f"scale-down waits: a change is settling ({now - pool.phase_since:.0f} s)"
            else:
                left = self._config.cooldown_s - (now - pool.phase_since)
                why = f"scale-down waits: cooldown, {left:.0f} s left"
            return self._refused(Outcome.DEFERRED, "deferred", why)
        group = group_name(pool.spec.name, capacity_class)
        if status is None:
            return self._refused(Outcome.REFUSED, "unknown-group", f"the target has no {group}")
        try:
            result = await self._target.scale(group, part.desired, reason, {"pool": pool.spec.name})
        except TargetUnavailable as exc:
            return self._refused(Outcome.FAILED, "target-unavailable", str(exc))
        except Exception as exc:  # recorded with the other group's outcome, which may be applied
            logger.exception("%s: scaling %s failed", pool.spec.name, group)
            return self._refused(Outcome.FAILED, "error", f"{type(exc).__name__}: {exc}")
        if result.outcome is ScaleOutcome.REFUSED:
            refusal = result.refusal.value if result.refusal else "rejected"
            return self._refused(Outcome.REFUSED, refusal, f"{refusal}: {result.detail}")
        if result.outcome is ScaleOutcome.APPLIED:
            return Outcome.APPLIED, result.detail, result.count
        return Outcome.UNCHANGED, result.detail, result.count

    def _refused(
        self, outcome: Outcome, reason: str, detail: str
    ) -> tuple[Outcome, str, int | None]:
        self._metrics.refused.labels(reason).inc()
        return outcome, detail, None

    def _adopt(self, pool: _Pool, status: GroupStatus, now: float) -> None:
        """Adopts a count somebody else set, once per change: records it, restarts the policy,
        and keeps the pool from moving against it for one window."""
        event = status.external_change
        if event is None or pool.adopted.get(status.name) == (event.time, event.count):
            return
        pool.adopted[status.name] = (event.time, event.count)
        pool.state = PolicyState()
        after = "the observation window restarts"
        # Its age, not the adoption's: a new leader (or a restart) adopts the latest
        # event again, however old, and must not hold the pool another whole window.
        age = max(0.0, self._wall() - event.time)
        if event.count is not None:
            change = ManualChange(status.name, event.previous_count, event.count, now - age)
            pool.manual[status.name] = change
            after = change.promise(pool.spec.policy.scale_down_window_s - age)
        when = f", {age:.0f} s ago" if age >= 1 else ""
        reason = (
            f"adopted external change of {status.name}: {event.previous_count} -> {event.count} "
            f"({event.message or 'no message'}{when}); {after}"
        )
        action = GroupAction(
            status.name,
            status.capacity_class,
            event.previous_count,
            status.desired,
            0,
            Outcome.NO_CHANGE,
            event.message,
        )
        self._metrics.decisions.labels(pool.spec.name, status.name, "adopt").inc()
        self._record(pool, Kind.ADOPT, reason, (action,))

    def _measure(
        self, pool: _Pool, signals: PoolSignals, load: PoolLoad, decision: Decision
    ) -> None:
        name = pool.spec.name
        for cg, cc in _GROUPS:
            group = group_name(name, cc)
            part = decision.group(cg)
            direction = "up" if part.delta > 0 else "down" if part.delta < 0 else "hold"
            self._metrics.decisions.labels(name, group, direction).inc()
            self._metrics.desired.labels(name, group).set(part.desired)
            self._metrics.current.labels(name, group).set(part.current)
        age = float("inf") if load.missing else load.age_s
        self._metrics.signal_age.labels(name).set(age)
        self._metrics.demand.labels(name).set(signals.demand)

    def _record(
        self, pool: _Pool, kind: Kind, reason: str, actions: tuple[GroupAction, ...]
    ) -> bool:
        """Records and logs a decision, unless it only repeats the pool's previous record;
        True when it was recorded (news)."""
        if self.log.record(pool.spec.name, kind, reason, actions) is None:
            logger.debug("%s: %s", pool.spec.name, reason)
            return False
        changes = ", ".join(
            f"{a.group} {a.outcome.value}" for a in actions if a.desired != a.current
        )
        logger.info("%s: %s%s", pool.spec.name, reason, f" [{changes}]" if changes else "")
        return True
