"""Shared test vectors of the router's failover bookkeeping.

The router's :class:`~services.router.failover.ReplayLog` and
:class:`~services.router.failover.ResultTracker` decide what a new instance is
sent after a failover and what the client sees of it. Any other implementation
of the data path (one in another language) must decide exactly alike. This
module records, for scripted and seeded random operation sequences, what the
Python implementation answers, in ``failover.json`` beside it; the unit test
``tests/unit/test_failover_vectors.py`` checks the Python code still answers
so, and another implementation replays the same file.

Format: ``{"replay_log": [case...], "result_tracker": [case...]}``.

A replay-log case has ``linear16``, ``sample_rate``, ``replay_max_bytes``,
``context_ms`` and ``ops``. The audio is the byte string whose byte at stream
position ``p`` is ``p % 251``, appended in pieces. Each op is one of:

* ``{"op": "append", "n": N}``: the next ``N`` bytes of that audio;
* ``{"op": "next", "expect": null | {"n": N, "crc32": C}}``: ``next_request()``,
  its audio's length and CRC-32 (IEEE, as ``zlib.crc32``);
* ``{"op": "commit", "end_ms": E, "start_ms": S, "text": T}``;
* ``{"op": "restart", "expect": bool}``;
* ``{"op": "half_close"}``: sets ``half_closed``;
* ``{"op": "metadata", "expect": [[key, value], ...]}``: ``resume_metadata()``,
  binary values (``-bin`` keys) as their UTF-8 text;
* ``{"op": "state", "expect": {"unsent": int, "total": int, "pending": bool,
  "replayable": bool, "audio_ms": int}}`` (``audio_ms``: ``audio_seconds()`` in
  whole milliseconds, rounded down).

A result-tracker case has ``ops``:

* ``{"op": "begin", "resumed": bool}``: ``begin_attempt``;
* ``{"op": "failover"}``: ``failovers += 1``;
* ``{"op": "result", "index": I, "final": bool, "start_ms": S, "end_ms": E,
  "expect": null | I'}``: a result of the current instance; dropped, or sent
  with utterance index ``I'``;
* ``{"op": "event", "type": "started" | "ended", "offset_ms": O, "expect": bool}``:
  a speech event; sent (true) or dropped;
* ``{"op": "summary", "expect": {"final_results": int, "failovers": int}}``.

Millisecond values are integers or floats with at most three decimals
(``end_ms`` 1500.7 is a final ending at 1500.7 ms).

    python -m tests.vectors.failover          # checks the file is current
    python -m tests.vectors.failover --write  # regenerates it
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import zlib
from pathlib import Path
from typing import Any

from google.protobuf import duration_pb2

from services.router.failover import ReplayLog, ResultTracker
from voxmesh.stt.v1 import stt_pb2

__all__ = ["PATH", "build", "replay_log_answers", "result_tracker_answers"]

PATH = Path(__file__).with_name("failover.json")
_PERIOD = 251
_TEXTS = ("the birch canoe", "slid on the smooth planks", "glue <the> sheet & go", "é ü ß 東京")


def _audio(start: int, n: int) -> bytes:
    return bytes((start + i) % _PERIOD for i in range(n))


def replay_log_answers(case: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs ``case``'s ops on a :class:`ReplayLog`; returns the ops with what it answered."""
    log = ReplayLog(
        case["linear16"], case["sample_rate"], case["replay_max_bytes"], case["context_ms"]
    )
    out: list[dict[str, Any]] = []
    for op in case["ops"]:
        name = op["op"]
        answered = {k: v for k, v in op.items() if k != "expect"}
        if name == "append":
            log.append(
                stt_pb2.StreamingRecognizeRequest(audio_content=_audio(log.total_bytes, op["n"]))
            )
        elif name == "next":
            request = log.next_request()
            answered["expect"] = (
                None
                if request is None
                else {"n": len(request.audio_content), "crc32": zlib.crc32(request.audio_content)}
            )
        elif name == "commit":
            log.commit(op["end_ms"], op["start_ms"], op["text"])
        elif name == "restart":
            answered["expect"] = log.restart()
        elif name == "half_close":
            log.half_closed = True
        elif name == "metadata":
            answered["expect"] = [
                [key, value.decode() if isinstance(value, bytes) else value]
                for key, value in log.resume_metadata()
            ]
        elif name == "state":
            answered["expect"] = {
                "unsent": log.unsent_bytes(),
                "total": log.total_bytes,
                "pending": log.pending,
                "replayable": log.replayable,
                "audio_ms": int(log.audio_seconds() * 1000),
            }
        else:
            raise ValueError(f"unknown replay-log op {name!r}")
        out.append(answered)
    return out


def _duration(ms: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(ms * 1e6))
    return d


def result_tracker_answers(case: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs ``case``'s ops on a :class:`ResultTracker`; returns the ops with its answers."""
    tracker = ResultTracker()
    out: list[dict[str, Any]] = []
    for op in case["ops"]:
        name = op["op"]
        answered = {k: v for k, v in op.items() if k != "expect"}
        if name == "begin":
            tracker.begin_attempt(op["resumed"])
        elif name == "failover":
            tracker.failovers += 1
        elif name == "result":
            response = stt_pb2.StreamingRecognizeResponse(
                result=stt_pb2.StreamingRecognitionResult(
                    utterance_index=op["index"],
                    is_final=op["final"],
                    start_offset=_duration(op["start_ms"]),
                    end_offset=_duration(op["end_ms"]),
                )
            )
            sent = tracker.on_response(response)
            answered["expect"] = None if sent is None else sent.result.utterance_index
        elif name == "event":
            kind = (
                stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED
                if op["type"] == "started"
                else stt_pb2.SPEECH_EVENT_TYPE_SPEECH_ENDED
            )
            response = stt_pb2.StreamingRecognizeResponse(
                speech_event=stt_pb2.SpeechEvent(type=kind, offset=_duration(op["offset_ms"]))
            )
            answered["expect"] = tracker.on_response(response) is not None
        elif name == "summary":
            summary = stt_pb2.StreamSummary()
            tracker.fix_summary(summary, "s", 0.0)
            answered["expect"] = {
                "final_results": summary.final_results,
                "failovers": summary.failovers,
            }
        else:
            raise ValueError(f"unknown result-tracker op {name!r}")
        out.append(answered)
    return out


def _random_log_case(rng: random.Random) -> dict[str, Any]:
    """A plausible stream: chunks arrive, the instance takes them, finals move the resume
    point, instances fail and the stream restarts; with a small bound now and then."""
    linear16 = rng.random() < 0.8
    rate = rng.choice([16000, 8000, 44100, 11025, 11127]) if linear16 else 0
    chunk = max(2, (2 * rate // 10) if linear16 else rng.choice([500, 1000, 4096]))
    bound = rng.choice([1 << 20, 1 << 20, 6 * chunk, 3 * chunk])
    context_ms = rng.choice([0, 0, 2000, 30000])
    ops: list[dict[str, Any]] = []
    bytes_per_ms = (2 * rate / 1000) if linear16 else 32.0
    total = 0
    final_end = 0.0
    for _ in range(rng.randint(10, 60)):
        roll = rng.random()
        if roll < 0.35:
            roll = rng.random()
            n = chunk if roll < 0.75 else 0 if roll < 0.8 else rng.randrange(2, 3 * chunk, 2)
            ops.append({"op": "append", "n": n})
            total += n
        elif roll < 0.6:
            ops.append({"op": "next"})
        elif roll < 0.75:
            heard_ms = total / bytes_per_ms
            end = round(rng.uniform(final_end, heard_ms + 50), rng.choice([0, 1, 3]))
            start = round(rng.uniform(final_end, end), rng.choice([0, 1]))
            final_end = max(final_end, end)
            ops.append(
                {"op": "commit", "end_ms": end, "start_ms": start, "text": rng.choice(_TEXTS)}
            )
        elif roll < 0.85:
            ops.append({"op": "restart"})
            ops.append({"op": "metadata"})
        else:
            ops.append({"op": "state"})
    if rng.random() < 0.5:
        ops.append({"op": "half_close"})
    ops += [{"op": "state"}, {"op": "restart"}, {"op": "metadata"}, {"op": "next"}]
    return {
        "linear16": linear16,
        "sample_rate": rate,
        "replay_max_bytes": bound,
        "context_ms": context_ms,
        "ops": ops,
    }


def _result(index: int, *, final: bool, start_ms: float, end_ms: float) -> dict[str, Any]:
    return {"op": "result", "index": index, "final": final, "start_ms": start_ms, "end_ms": end_ms}


def _random_tracker_case(rng: random.Random) -> dict[str, Any]:
    """Instances that each replay from around the last final the client got (a lead-in
    may repeat it), announce speech, send interims and finals, and may fail anywhere."""
    utterances: list[tuple[float, float]] = []
    t = 0.0
    for _ in range(rng.randint(2, 8)):
        start = t + rng.uniform(100, 800)
        end = start + rng.uniform(300, 3000)
        utterances.append((round(start, 1), round(end, 1)))
        t = end
    ops: list[dict[str, Any]] = [{"op": "begin", "resumed": False}]
    done = 0  # utterances whose final the "router" has sent, as far as this generator knows
    for attempt in range(rng.randint(1, 4)):
        if attempt:
            ops += [{"op": "failover"}, {"op": "begin", "resumed": True}]
        first = max(0, done - rng.choice([0, 0, 1]))  # a lead-in repeats the last final
        for local, (start, end) in enumerate(utterances[first:]):
            ops.append({"op": "event", "type": "started", "offset_ms": start})
            for _ in range(rng.randint(0, 3)):
                interim_end = round(rng.uniform(start, end), 1)
                ops.append(_result(local, final=False, start_ms=start, end_ms=interim_end))
            if rng.random() < 0.15:
                break  # failed mid-utterance
            ops.append({"op": "event", "type": "ended", "offset_ms": end})
            if rng.random() < 0.1:
                break  # failed between the end and the final
            ops.append(_result(local, final=True, start_ms=start, end_ms=end))
            done = max(done, first + local + 1)
            if rng.random() < 0.15:
                break
        ops.append({"op": "summary"})
    return {"ops": ops}


_SCRIPTED_LOG_CASES: list[dict[str, Any]] = [
    {  # a final inside a chunk; replay from there
        "linear16": True, "sample_rate": 16000, "replay_max_bytes": 1 << 20, "context_ms": 0,
        "ops": [*[{"op": "append", "n": 3200}] * 5, *[{"op": "next"}] * 6,
                {"op": "commit", "end_ms": 250.0, "start_ms": 0, "text": ""},
                {"op": "restart"}, {"op": "metadata"}, *[{"op": "next"}] * 4],
    },
    {  # whole samples every 10 ms at 44.1 kHz; a lead-in with context
        "linear16": True, "sample_rate": 44100, "replay_max_bytes": 1 << 20, "context_ms": 2000,
        "ops": [*[{"op": "append", "n": 8820}] * 3, *[{"op": "next"}] * 3,
                {"op": "commit", "end_ms": 123.4, "start_ms": 10, "text": "a b"},
                {"op": "restart"}, {"op": "metadata"}, {"op": "next"}, {"op": "state"}],
    },
    {  # a container: replayed whole, with a skip
        "linear16": False, "sample_rate": 0, "replay_max_bytes": 1 << 20, "context_ms": 2000,
        "ops": [*[{"op": "append", "n": 1000}] * 4, *[{"op": "next"}] * 4,
                {"op": "commit", "end_ms": 1500.7, "start_ms": 900, "text": "glue <the> & é"},
                {"op": "restart"}, {"op": "metadata"}, {"op": "next"}, {"op": "state"}],
    },
    {  # the bound drops sent audio: not replayable until a final passes it
        "linear16": True, "sample_rate": 16000, "replay_max_bytes": 6400, "context_ms": 0,
        "ops": [*[{"op": "append", "n": 3200}] * 2, *[{"op": "next"}] * 2,
                {"op": "append", "n": 3200}, {"op": "state"}, {"op": "restart"},
                {"op": "commit", "end_ms": 300, "start_ms": 0, "text": "x"},
                {"op": "state"}, {"op": "restart"}, {"op": "metadata"}],
    },
    {  # an empty chunk dropped unsent by a final ending where the sent audio ends
        "linear16": True, "sample_rate": 16000, "replay_max_bytes": 1 << 20, "context_ms": 0,
        "ops": [{"op": "append", "n": 3200}, {"op": "next"}, {"op": "append", "n": 0},
                {"op": "commit", "end_ms": 100.0, "start_ms": 0, "text": ""},
                {"op": "append", "n": 3200}, {"op": "append", "n": 3200},
                *[{"op": "next"}] * 3, {"op": "state"}],
    },
    {  # empty chunks: dropped while a chunk waits, sent once otherwise, never replayed
        "linear16": True, "sample_rate": 16000, "replay_max_bytes": 1 << 20, "context_ms": 0,
        "ops": [{"op": "append", "n": 3200}, *[{"op": "append", "n": 0}] * 3,
                *[{"op": "next"}] * 2, {"op": "append", "n": 0}, *[{"op": "next"}] * 2,
                {"op": "append", "n": 0}, {"op": "append", "n": 3200}, {"op": "append", "n": 0},
                *[{"op": "next"}] * 3, {"op": "restart"}, *[{"op": "next"}] * 3, {"op": "state"}],
    },
    {  # an empty chunk at the resume point still goes to the next instance
        "linear16": True, "sample_rate": 16000, "replay_max_bytes": 1 << 20, "context_ms": 0,
        "ops": [{"op": "append", "n": 3200}, {"op": "next"},
                {"op": "commit", "end_ms": 100.0, "start_ms": 0, "text": ""},
                {"op": "append", "n": 0}, {"op": "restart"}, {"op": "metadata"},
                *[{"op": "next"}] * 2, {"op": "state"}],
    },
]  # fmt: skip


def build(seed: int = 20261207, random_cases: int = 60) -> dict[str, Any]:
    """Every case, with the answers of the Python implementation."""
    rng = random.Random(seed)
    log_cases = [*_SCRIPTED_LOG_CASES, *(_random_log_case(rng) for _ in range(random_cases))]
    tracker_cases = [_random_tracker_case(rng) for _ in range(random_cases)]
    return {
        "replay_log": [{**c, "ops": replay_log_answers(c)} for c in log_cases],
        "result_tracker": [{"ops": result_tracker_answers(c)} for c in tracker_cases],
    }


def render(vectors: dict[str, Any]) -> str:
    """The file's text: one case per line, so a diff shows which cases changed."""
    lines = ["{"]
    for i, key in enumerate(("replay_log", "result_tracker")):
        lines.append(f' "{key}": [')
        cases = vectors[key]
        for j, case in enumerate(cases):
            sep = "," if j < len(cases) - 1 else ""
            lines.append("  " + json.dumps(case, ensure_ascii=False, separators=(",", ":")) + sep)
        lines.append(" ]" + ("," if i == 0 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Checks (or with --write, regenerates) ``failover.json``."""
    parser = argparse.ArgumentParser(description="failover test vectors")
    parser.add_argument("--write", action="store_true", help="regenerate the file")
    args = parser.parse_args(argv)
    text = render(build())
    if args.write:
        PATH.write_text(text, encoding="utf-8")
        return 0
    if PATH.read_text(encoding="utf-8") != text:
        print(f"{PATH} is out of date: python -m tests.vectors.failover --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
