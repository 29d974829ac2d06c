"""Python values to protobuf well-known types (Timestamp, Duration), one way everywhere."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

__all__ = ["MAX_DURATION_S", "duration", "timestamp"]

MAX_DURATION_S = 315_576_000_000.0
"""The largest value a google.protobuf.Duration holds (10,000 years)."""


def timestamp(epoch_s: float) -> timestamp_pb2.Timestamp:
    """A Timestamp of ``epoch_s`` seconds since the Unix epoch."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(epoch_s * 1e9))
    return stamp


def duration(seconds: float) -> duration_pb2.Duration:
    """A Duration of ``seconds``; more than a Duration holds (an infinite age) is sent as
    the largest one."""
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(min(seconds, MAX_DURATION_S) * 1e9))
    return value
