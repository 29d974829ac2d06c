"""An operator's count change stands for one stabilisation window.

When somebody else changes a group's count (the target reports it; for Nomad, a job scaling
event), the loop adopts it and asks :func:`respect_manual_change` to hold back, for one
window after it, every group change against the operator's direction:

- after a scale-up nothing shrinks (the policy's observation window, restarted on adoption,
  says the same);
- after a scale-down nothing grows, unless real-time streams queue: then the pool is short
  and people are waiting, so the policy's scale-up goes, and its reason says whose change
  it overrides.

A change that set no count (a scaling event with a message only) holds nothing back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from services.autoscaler.policy.decision import Decision, GroupDecision
from services.autoscaler.policy.inputs import PoolSignals

__all__ = ["ManualChange", "respect_manual_change"]


@dataclass(frozen=True)
class ManualChange:
    """A count change somebody else made, as the loop adopted it."""

    group: str
    """The capacity group's name (``asr_small/on-demand``)."""
    previous: int
    """Its count before the change."""
    count: int
    """The count the change set."""
    at: float
    """When it was made, on the loop's clock (like ``now``): the adoption less the
    event's age."""

    @property
    def direction(self) -> int:
        """1 for a scale-up, -1 for a scale-down, 0 for neither."""
        return (self.count > self.previous) - (self.count < self.previous)

    def promise(self, left_s: float) -> str:
        """What :func:`respect_manual_change` will do about it for the ``left_s`` left of
        its window, for the adoption's record."""
        if self.direction == 0:
            return "the observation window restarts"
        if left_s <= 0:
            return "older than the stabilisation window: nothing held back"
        return f"not reverted: {_held_back(self.direction, f'{left_s:.0f} s')}"


def respect_manual_change(
    decision: Decision,
    signals: PoolSignals,
    change: ManualChange | None,
    now: float,
    window_s: float,
) -> Decision:
    """``decision`` without the group changes against ``change`` while it is younger than
    ``window_s`` (see the module docstring); unchanged otherwise. Pure."""
    if change is None or change.direction == 0 or now - change.at >= window_s:
        return decision
    groups = (decision.on_demand, decision.preemptible)
    if not any(g.delta * change.direction < 0 for g in groups):
        return decision
    age = now - change.at
    if change.direction < 0 and signals.queued_realtime:
        what = f"{change.group} ({change.previous} -> {change.count}, {age:.0f} s ago)"
        why = f"realtime streams queue: the operator's scale-down of {what} is overridden"
        return replace(decision, reason=f"{decision.reason}; {why}")
    on_demand, preemptible = (_held(g, change.direction) for g in groups)
    verb = "down" if change.direction < 0 else "up"
    against = _held_back(change.direction, f"another {window_s - age:.0f} s")
    reason = (
        f"holding: {change.group} was scaled {verb} by an operator {age:.0f} s ago "
        f"({change.previous} -> {change.count}); {against} "
        f"(the policy asks: {decision.reason})"
    )
    return Decision(on_demand, preemptible, reason, decision.sizing)


def _held_back(direction: int, span: str) -> str:
    """What stands against the change in ``direction`` for ``span`` (``"10 s"``)."""
    if direction < 0:
        return f"no scale-up for {span} unless realtime streams queue"
    return f"no scale-down for {span}"


def _held(group: GroupDecision, direction: int) -> GroupDecision:
    """``group`` kept at its current size if it moves against ``direction``."""
    if group.delta * direction < 0:
        return GroupDecision(desired=group.current, current=group.current)
    return group
