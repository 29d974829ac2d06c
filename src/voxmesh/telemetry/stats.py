"""Reading the GPU figures of a telemetry snapshot, unknown ones included.

``GpuStats`` fields have no presence: a figure NVML does not report for a device
is 0 on the wire and named in ``unknown_figures``. Consumers read figures through
:func:`known_figure` so that an unknown one is ``None``, never a real 0.
"""

from __future__ import annotations

from collections.abc import Iterable

from voxmesh.stt.v1 import stt_pb2

__all__ = ["known_figure", "max_known"]


def known_figure(gpu: stt_pb2.GpuStats, name: str) -> float | None:
    """The figure ``name`` of ``gpu`` (a ``GpuStats`` field), or None when unknown."""
    if name in gpu.unknown_figures:
        return None
    return float(getattr(gpu, name))


def max_known(gpus: Iterable[stt_pb2.GpuStats], name: str) -> float | None:
    """The largest known figure ``name`` of ``gpus``; None when no GPU reports it."""
    known = (v for g in gpus if (v := known_figure(g, name)) is not None)
    return max(known, default=None)
