"""The autoscaler's scaling policy: a pure function per pool, ``decide(signals, state, config,
now) -> (decision, state)``, built from small parts (forecast, hybrid split, stabilisation).

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

__all__ = [
    "CapacityGroup",
    "Decision",
    "GroupDecision",
    "GroupLimits",
    "GroupSignals",
    "InstanceSignals",
    "PolicyState",
    "PoolPolicy",
    "PoolSignals",
    "Recommendation",
    "Sizing",
    "decide",
    "hold",
]
