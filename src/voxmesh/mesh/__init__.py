"""Single-machine (embedded) mode: the whole mesh as local processes.

:mod:`.process` starts one service process and waits for its ready line;
:mod:`.local` runs the mesh (``python -m voxmesh.mesh``). The autoscaler's
local target and the end-to-end tests use the same process handle.
"""
