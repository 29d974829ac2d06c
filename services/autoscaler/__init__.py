"""The voxmesh autoscaler: signals, a pure scaling policy, scale targets and one evaluation loop.

``policy`` decides how many instances each capacity group of a pool should have; it is a pure
function of the signals, its own explicit state, the pool's configuration and the time it is
given. The loop owns time, the leader lock and the targets (Nomad, local processes).
"""
