"""The contract between the simulated mesh and the autoscalers it compares.

Every ``interval_s`` the mesh hands a controller a :class:`MeshView` (what a real autoscaler
could observe) and applies the :class:`Actions` it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Actions", "Controller", "GroupActions", "GroupView", "MeshView", "towards"]


@dataclass(frozen=True)
class GroupView:
    """One capacity group as the scheduler reports it."""

    serving: int
    """Instances accepting streams."""
    starting: int
    """Requested, not serving yet (waiting for placement, provisioning or starting)."""
    unplaced: int
    """Of ``starting``: preemptible requests waiting for capacity (a blocked evaluation)."""
    draining: int
    """Instances draining on the controller's request."""
    reclaiming: int
    """Instances with a preemption notice."""
    oldest_starting_s: float
    """Age of the oldest starting instance (0 when none)."""
    serving_loads: tuple[int, ...]
    """Active streams on each serving instance."""

    @property
    def current(self) -> int:
        """Serving plus starting."""
        return self.serving + self.starting


@dataclass(frozen=True)
class MeshView:
    """What a controller sees at one evaluation."""

    now: float
    """Simulated time, seconds."""
    max_streams: int
    """Per-instance stream limit."""
    active_streams: int
    """Streams being served."""
    queued: int
    """Streams waiting for a slot (new and interrupted ones)."""
    on_demand: GroupView
    """The on-demand group."""
    preemptible: GroupView
    """The preemptible group."""


@dataclass(frozen=True)
class GroupActions:
    """What to do to one group: start, cancel starting ones, drain serving ones."""

    start: int = 0
    """Instances to request."""
    cancel: int = 0
    """Starting instances to give up (unplaced first, then the newest)."""
    drain: int = 0
    """Serving instances to drain (fewest streams first); each leaves once empty."""


@dataclass(frozen=True)
class Actions:
    """A controller's answer for both groups."""

    on_demand: GroupActions = GroupActions()
    """On-demand actions."""
    preemptible: GroupActions = GroupActions()
    """Preemptible actions."""


def towards(group: GroupView, desired: int) -> GroupActions:
    """Actions that bring ``group`` to ``desired`` serving-plus-starting instances."""
    delta = desired - group.current
    if delta >= 0:
        return GroupActions(start=delta)
    cancel = min(group.starting, -delta)
    return GroupActions(cancel=cancel, drain=-delta - cancel)


class Controller(Protocol):
    """An autoscaler under comparison."""

    name: str
    """Name in reports."""
    interval_s: float
    """Seconds between evaluations (``math.inf``: never evaluated)."""

    def initial_fleet(self, instances: int, preemptible_available: int) -> tuple[int, int]:
        """``(on-demand, preemptible)`` serving at time 0, given the ``instances`` that the
        initial demand needs: the fleet this controller would have converged to."""
        ...

    def control(self, view: MeshView) -> Actions:
        """One evaluation."""
        ...
