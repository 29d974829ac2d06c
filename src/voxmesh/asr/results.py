"""Session events to stt.v1 messages."""

from __future__ import annotations

from google.protobuf import duration_pb2

from voxmesh.asr.session import Final, Interim, SessionEvent, SpeechEnded, SpeechStarted
from voxmesh.stt.v1 import stt_pb2

__all__ = ["duration", "final_result", "to_response"]


def duration(seconds: float) -> duration_pb2.Duration:
    """A Duration of ``seconds`` rounded to the millisecond."""
    d = duration_pb2.Duration()
    d.FromMilliseconds(max(0, round(seconds * 1000)))
    return d


def final_result(event: Final, language: str) -> stt_pb2.StreamingRecognitionResult:
    """The message of a final result."""
    words = [
        stt_pb2.WordInfo(
            start_offset=duration(w.start),
            end_offset=duration(w.end),
            word=w.word,
            probability=w.probability,
        )
        for w in event.words
    ]
    return stt_pb2.StreamingRecognitionResult(
        alternatives=[
            stt_pb2.SpeechRecognitionAlternative(
                transcript=event.text, confidence=event.confidence, words=words
            )
        ],
        is_final=True,
        stability=1.0,
        start_offset=duration(event.start),
        end_offset=duration(event.end),
        utterance_index=event.utterance,
        language_code=event.language or language,
    )


def to_response(event: SessionEvent, language: str) -> stt_pb2.StreamingRecognizeResponse:
    """The response message of a session event."""
    if isinstance(event, Final):
        return stt_pb2.StreamingRecognizeResponse(result=final_result(event, language))
    if isinstance(event, Interim):
        return stt_pb2.StreamingRecognizeResponse(
            result=stt_pb2.StreamingRecognitionResult(
                alternatives=[stt_pb2.SpeechRecognitionAlternative(transcript=event.text)],
                is_final=False,
                stability=event.stability,
                start_offset=duration(event.start),
                end_offset=duration(event.end),
                utterance_index=event.utterance,
                language_code=event.language or language,
            )
        )
    kind = (
        stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED
        if isinstance(event, SpeechStarted)
        else stt_pb2.SPEECH_EVENT_TYPE_SPEECH_ENDED
    )
    assert isinstance(event, SpeechStarted | SpeechEnded)
    return stt_pb2.StreamingRecognizeResponse(
        speech_event=stt_pb2.SpeechEvent(type=kind, offset=duration(event.offset))
    )
