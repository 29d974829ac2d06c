"""An asyncio load generator for StreamingRecognize, run as its own process.

Opens ``--streams`` concurrent streams (spread over ``--channels``
connections, started over ``--ramp`` seconds), each sending one
``--chunk-ms`` LINEAR16 chunk every ``--chunk-ms`` on a fixed schedule (real
time), and times every ``--interim-every``-th chunk: the time from writing it
to receiving the interim result the server sends for it; and every stream from
opening its call to its first interim result (``first_response_ms``: setting a
stream up, a proxy's placement included, plus one message). That pairing needs a
backend that answers exactly those chunks with one interim result each, such
as ``tests.doubles.fake_asr`` with a long ``--utterance-ms`` and the same
``--interim-every``.

Protocol on stdout, for an orchestrator: ``phase measure`` when the warm-up
ends, ``phase done`` when the measured window ends, then one JSON line with
the figures of the window. ``send_lag`` is how late chunks left against their
schedule: when it grows, the generator itself could not keep up and the
level is not sustained.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.common import percentile
from voxmesh.stt.v1 import stt_pb2, stt_pb2_grpc


@dataclass
class Window:
    """What the measured window saw."""

    start: float = 0.0
    end: float = 0.0
    latencies: list[float] = field(default_factory=list)
    send_lags: list[float] = field(default_factory=list)
    sent: int = 0
    received: int = 0

    def active(self, now: float) -> bool:
        return self.start <= now < self.end


@dataclass
class Stats:
    """Stream outcomes."""

    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_responses: list[float] = field(default_factory=list)
    """Per stream, from opening its call to its first interim result (any time)."""


def config(stream_id: str) -> stt_pb2.StreamingRecognizeRequest:
    return stt_pb2.StreamingRecognizeRequest(
        streaming_config=stt_pb2.StreamingRecognitionConfig(
            config=stt_pb2.RecognitionConfig(
                model="asr_small",
                encoding=stt_pb2.AUDIO_ENCODING_LINEAR16,
                sample_rate_hertz=16000,
                priority=stt_pb2.PRIORITY_REALTIME,
            ),
            interim_results=True,
            stream_id=stream_id,
        )
    )


async def one_stream(
    stub: Any,
    index: int,
    start_at: float,
    end_at: float,
    chunk_s: float,
    chunk: bytes,
    window: Window,
    stats: Stats,
    interim_every: int = 1,
) -> None:
    """One stream from ``start_at`` to ``end_at`` (loop time), timing every
    ``interim_every``-th chunk (the ones the backend answers)."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    opened = loop.time()
    call: Any = stub.StreamingRecognize()
    pending: deque[float] = deque()
    request = stt_pb2.StreamingRecognizeRequest(audio_content=chunk)

    async def write() -> None:
        await call.write(config(f"load-{index}"))
        due = loop.time()
        sent = 0
        while due < end_at:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            sent += 1
            if sent % interim_every == 0:
                pending.append(now)
            await call.write(request)
            if window.active(now):
                window.sent += 1
                window.send_lags.append(now - due)
            due += chunk_s
        await call.done_writing()

    writer = asyncio.create_task(write())
    first = True
    try:
        while (response := await call.read()) != grpc.aio.EOF:
            result = response.result
            if response.WhichOneof("streaming_response") != "result" or result.is_final:
                continue
            now = loop.time()
            if first:
                first = False
                stats.first_responses.append(now - opened)
            sent_at = pending.popleft()
            if window.active(sent_at):
                window.received += 1
                window.latencies.append(now - sent_at)
        await writer
        stats.ok += 1
    except grpc.aio.AioRpcError as err:
        stats.errors[err.code().name] = stats.errors.get(err.code().name, 0) + 1
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the load and returns the figures of the measured window."""
    loop = asyncio.get_running_loop()
    channels = [grpc.aio.insecure_channel(args.target) for _ in range(args.channels)]
    stubs = [stt_pb2_grpc.RecognizerServiceStub(c) for c in channels]
    chunk_s = args.chunk_ms / 1000
    chunk = bytes(int(16000 * chunk_s) * 2)
    t0 = loop.time() + 0.2
    window = Window(start=t0 + args.ramp + args.warmup)
    window.end = window.start + args.duration
    end_at = window.end + 0.5
    stats = Stats()
    tasks = [
        asyncio.create_task(
            one_stream(
                stubs[i % len(stubs)],
                i,
                t0 + args.ramp * i / max(1, args.streams),
                end_at,
                chunk_s,
                chunk,
                window,
                stats,
                args.interim_every,
            )
        )
        for i in range(args.streams)
    ]

    async def phases() -> None:
        await asyncio.sleep(max(0.0, window.start - loop.time()))
        print("phase measure", flush=True)
        await asyncio.sleep(max(0.0, window.end - loop.time()))
        print("phase done", flush=True)

    marker = asyncio.create_task(phases())
    cpu0 = time.process_time()
    await asyncio.gather(*tasks)
    await marker
    cpu = time.process_time() - cpu0
    for channel in channels:
        await channel.close()
    ms = [x * 1000 for x in window.latencies]
    lags = [x * 1000 for x in window.send_lags]
    firsts = [x * 1000 for x in stats.first_responses]
    expected = args.streams * args.duration / chunk_s
    return {
        "target": args.target,
        "streams": args.streams,
        "chunk_ms": args.chunk_ms,
        "interim_every": args.interim_every,
        "window_s": args.duration,
        "streams_ok": stats.ok,
        "stream_errors": stats.errors,
        "chunks_expected": round(expected),
        "chunks_sent": window.sent,
        "responses_timed": window.received,
        "latency_ms": {
            "p50": percentile(ms, 50),
            "p90": percentile(ms, 90),
            "p99": percentile(ms, 99),
            "max": max(ms, default=float("nan")),
        },
        "send_lag_ms": {"p50": percentile(lags, 50), "p99": percentile(lags, 99)},
        "first_response_ms": {
            "p50": percentile(firsts, 50),
            "p99": percentile(firsts, 99),
            "max": max(firsts, default=float("nan")),
        },
        "loadgen_cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    """Parses arguments, runs the load, prints the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--channels", type=int, default=8, help="HTTP/2 connections")
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument(
        "--interim-every", type=int, default=1, help="chunks per interim result (timed ones)"
    )
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds to start all streams")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
