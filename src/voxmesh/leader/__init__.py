"""Leader election, so that only one replica (the autoscaler's) acts at a time.

One contract (:mod:`.base`) and two backends: a Consul session holding a KV
lock (:mod:`.consul`, its calls in :mod:`.consul_api`) and an ``flock`` on a
file for single-machine mode (:mod:`.file`).
"""

from voxmesh.leader.base import LeaderLock, campaign
from voxmesh.leader.consul import ConsulLeaderLock
from voxmesh.leader.consul_api import ConsulSessionApi, PyConsulSessionApi
from voxmesh.leader.file import FileLeaderLock

__all__ = [
    "ConsulLeaderLock",
    "ConsulSessionApi",
    "FileLeaderLock",
    "LeaderLock",
    "PyConsulSessionApi",
    "campaign",
]
