"""The autoscaler's scaling policy: a pure function per pool, ``decide(signals, state, config,
now) -> (decision, state)``, built from small parts (forecast, hybrid split, stabilisation),
and :func:`respect_manual_change`, which keeps an operator's count change for one window.

The algorithm and the reasons for its defaults are in docs/autoscaling.md.
"""

from services.autoscaler.policy.config import GroupLimits, PoolPolicy
from services.autoscaler.policy.core import decide, hold
from services.autoscaler.policy.decision import (
    Decision,
    GroupDecision,
    PolicyState,
    Recommendation,
    Sizing,
)
from services.autoscaler.policy.inputs import (
    CapacityGroup,
    GroupSignals,
    InstanceSignals,
    PoolSignals,
)
from services.autoscaler.policy.manual import ManualChange, respect_manual_change

__all__ = [
    "CapacityGroup",
    "Decision",
    "GroupDecision",
    "GroupLimits",
    "GroupSignals",
    "InstanceSignals",
    "ManualChange",
    "PolicyState",
    "PoolPolicy",
    "PoolSignals",
    "Recommendation",
    "Sizing",
    "decide",
    "hold",
    "respect_manual_change",
]
