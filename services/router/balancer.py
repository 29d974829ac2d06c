"""Choosing an instance for a stream: preference tiers + power of two choices.

Pure policy: no I/O, no clock, randomness injected. The candidates describe
their own live load (see :class:`Candidate`); the balancer never mutates them.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from voxmesh.discovery import CAPACITY_ON_DEMAND, CAPACITY_PREEMPTIBLE

__all__ = ["Candidate", "PowerOfTwoBalancer", "Preference"]


class Candidate(Protocol):
    """What the balancer needs to know about one instance."""

    @property
    def instance_id(self) -> str:
        """Unique id of the instance."""
        ...

    @property
    def region(self) -> str:
        """Region the instance runs in."""
        ...

    @property
    def gpu_type(self) -> str:
        """GPU model or ``cpu``."""
        ...

    @property
    def capacity_class(self) -> str:
        """``on-demand`` or ``preemptible``."""
        ...

    def accepting(self) -> bool:
        """False while draining, NOT_SERVING, unreachable or gone from discovery."""
        ...

    def last_resort(self) -> bool:
        """True while it does not accept but, draining, may still take a stream sent as a
        last resort (reachable, and its drain has long enough left)."""
        ...

    def has_room(self) -> bool:
        """True when it can take one more stream now."""
        ...

    def load(self) -> float:
        """Live load: (active streams + pending work) / max streams, router in-flight included."""
        ...


C = TypeVar("C", bound=Candidate)


@dataclass(frozen=True)
class Preference:
    """Where the router would rather send work."""

    region: str = ""
    """Preferred region; empty for no preference."""
    gpu_types: tuple[str, ...] = ()
    """GPU types, most preferred first; types not listed rank after all listed ones."""


class PowerOfTwoBalancer:
    """Power-of-two-choices over live load, inside preference tiers.

    Algorithm, for one stream of a given priority:

    1. Drop candidates that do not accept new streams (draining, NOT_SERVING,
       unreachable, gone from discovery) and those in ``exclude`` (instances
       that already failed this stream).
    2. Rank the rest into tiers by the tuple (region mismatch, GPU-type rank,
       capacity-class mismatch); realtime prefers ``on-demand`` capacity,
       batch prefers ``preemptible``. Lower is better.
    3. Walk the tiers from best to worst and stop at the first with at least
       one candidate that has room; the later tiers are the spill-over.
    4. In that tier sample two distinct candidates with room at random and
       take the one with the lower load (a single one is taken as it is).
       Sampling two instead of scanning all keeps herds from piling onto the
       instance that looked least loaded in a stale snapshot, and is within a
       constant of the optimum (Mitzenmacher, "The Power of Two Choices").
    5. No accepting candidate with room anywhere: the same over the draining
       candidates that may take a last-resort stream (:meth:`Candidate.last_resort`:
       the router's opt-in ``last_resort`` is on, reachable, drain long enough left,
       room). A stream served there now beats one waiting in the queue; if it
       outlives the drain, the router fails it over.
    6. None of those either: return None; the caller queues the stream (see
       :mod:`.admission`).
    """

    def __init__(self, preference: Preference, rng: random.Random) -> None:
        self._preference = preference
        self._rng = rng

    def tier(self, candidate: Candidate, realtime: bool) -> tuple[int, int, int]:
        """The preference rank of ``candidate`` for a stream (lower is better)."""
        pref = self._preference
        region = 0 if not pref.region or candidate.region == pref.region else 1
        try:
            gpu = pref.gpu_types.index(candidate.gpu_type)
        except ValueError:
            gpu = len(pref.gpu_types)
        wanted = CAPACITY_ON_DEMAND if realtime else CAPACITY_PREEMPTIBLE
        capacity = 0 if candidate.capacity_class == wanted else 1
        return (region, gpu, capacity)

    def choose(
        self,
        candidates: Sequence[C],
        realtime: bool,
        exclude: Collection[str] = (),
    ) -> C | None:
        """The instance for a new stream, or None when none has room."""
        usable = [c for c in candidates if c.instance_id not in exclude and c.has_room()]
        chosen = self._pick([c for c in usable if c.accepting()], realtime)
        if chosen is None:
            chosen = self._pick(
                [c for c in usable if not c.accepting() and c.last_resort()], realtime
            )
        return chosen

    def _pick(self, candidates: Sequence[C], realtime: bool) -> C | None:
        """Power of two choices in the best preference tier of ``candidates``."""
        tiers: dict[tuple[int, int, int], list[C]] = {}
        for cand in candidates:
            tiers.setdefault(self.tier(cand, realtime), []).append(cand)
        if not tiers:
            return None
        best = tiers[min(tiers)]
        if len(best) == 1:
            return best[0]
        first, second = self._rng.sample(best, 2)
        return second if second.load() < first.load() else first
