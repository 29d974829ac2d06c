package relay

import (
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/voxmesh/voxmesh/dataplane/failover"
	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// Field numbers of the response messages the relay reads (stt.proto).
const (
	respResult  protowire.Number = 1 // StreamingRecognizeResponse.result
	respEvent   protowire.Number = 2 // StreamingRecognizeResponse.speech_event
	respSummary protowire.Number = 3 // StreamingRecognizeResponse.summary

	resultAlternatives protowire.Number = 1 // StreamingRecognitionResult.alternatives
	resultIsFinal      protowire.Number = 2 // StreamingRecognitionResult.is_final
	resultStart        protowire.Number = 4 // StreamingRecognitionResult.start_offset
	resultEnd          protowire.Number = 5 // StreamingRecognitionResult.end_offset
	resultIndex        protowire.Number = 6 // StreamingRecognitionResult.utterance_index

	alternativeTranscript protowire.Number = 1 // SpeechRecognitionAlternative.transcript

	eventType   protowire.Number = 1 // SpeechEvent.type
	eventOffset protowire.Number = 2 // SpeechEvent.offset

	durationSeconds protowire.Number = 1 // google.protobuf.Duration.seconds
	durationNanos   protowire.Number = 2 // google.protobuf.Duration.nanos
)

// responseKind is which field of a StreamingRecognizeResponse's oneof is set.
type responseKind int

const (
	kindNone responseKind = iota
	kindResult
	kindEvent
	kindSummary
)

// responseView is what the relay reads of an instance's response, read in place
// from its encoding.
type responseView struct {
	kind responseKind
	// payload is the encoding of the result or the speech event.
	payload []byte

	// A result's utterance index, finality, offsets and first transcript.
	index   int32
	final   bool
	startMs float64
	endMs   float64
	text    []byte

	// A speech event's kind and offset.
	started  bool
	offsetMs float64
}

// viewResponse reads raw without decoding it into messages (no allocation). ok
// is false when raw is not encoded as protobuf encoders write these messages
// (one oneof field; no offset twice): the caller then decodes it in full. A
// summary is only recognised: the relay rewrites it anyway.
func viewResponse(raw []byte) (v responseView, ok bool) {
	if len(raw) == 0 {
		return v, true
	}
	num, typ, n := protowire.ConsumeTag(raw)
	if n < 0 || typ != protowire.BytesType {
		return v, false
	}
	payload, m := protowire.ConsumeBytes(raw[n:])
	if m < 0 || n+m != len(raw) {
		return v, false
	}
	v.payload = payload
	switch num {
	case respResult:
		v.kind = kindResult
		return v, viewResult(&v, payload)
	case respEvent:
		v.kind = kindEvent
		return v, viewEvent(&v, payload)
	case respSummary:
		v.kind = kindSummary
		return v, true
	}
	return v, false
}

func viewResult(v *responseView, b []byte) bool {
	var seenAlternative, seenStart, seenEnd bool
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == resultIsFinal && typ == protowire.VarintType:
			x, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return false
			}
			v.final, b = x != 0, b[m:]
			continue
		case num == resultIndex && typ == protowire.VarintType:
			x, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return false
			}
			v.index, b = int32(x), b[m:]
			continue
		case (num == resultAlternatives || num == resultStart || num == resultEnd) &&
			typ == protowire.BytesType:
			field, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return false
			}
			b = b[m:]
			var ok bool
			switch num {
			case resultAlternatives:
				if seenAlternative {
					continue // only the first hypothesis is read
				}
				seenAlternative = true
				v.text, ok = viewTranscript(field)
			case resultStart:
				if seenStart {
					return false // a second occurrence merges: decode in full
				}
				seenStart = true
				v.startMs, ok = viewDurationMs(field)
			case resultEnd:
				if seenEnd {
					return false
				}
				seenEnd = true
				v.endMs, ok = viewDurationMs(field)
			}
			if !ok {
				return false
			}
			continue
		case num == resultAlternatives || num == resultIsFinal || num == resultStart ||
			num == resultEnd || num == resultIndex:
			return false // a known field of an unexpected wire type
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return false
		}
		b = b[m:]
	}
	return true
}

// viewTranscript returns the transcript of an encoded SpeechRecognitionAlternative.
func viewTranscript(b []byte) ([]byte, bool) {
	var text []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		if num == alternativeTranscript {
			if typ != protowire.BytesType {
				return nil, false
			}
			s, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil, false
			}
			text, b = s, b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return nil, false
		}
		b = b[m:]
	}
	return text, true
}

func viewEvent(v *responseView, b []byte) bool {
	seenOffset := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == eventType && typ == protowire.VarintType:
			x, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return false
			}
			v.started = int32(x) == int32(sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_STARTED)
			b = b[m:]
			continue
		case num == eventOffset && typ == protowire.BytesType && !seenOffset:
			field, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return false
			}
			seenOffset, b = true, b[m:]
			var ok bool
			if v.offsetMs, ok = viewDurationMs(field); !ok {
				return false
			}
			continue
		case num == eventType || num == eventOffset:
			return false
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return false
		}
		b = b[m:]
	}
	return true
}

// viewDurationMs returns an encoded google.protobuf.Duration in milliseconds,
// as failover.DurationMs computes it.
func viewDurationMs(b []byte) (float64, bool) {
	var seconds int64
	var nanos int32
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, false
		}
		b = b[n:]
		if (num == durationSeconds || num == durationNanos) && typ == protowire.VarintType {
			x, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return 0, false
			}
			if num == durationSeconds {
				seconds = int64(x)
			} else {
				nanos = int32(x)
			}
			b = b[m:]
			continue
		}
		if num == durationSeconds || num == durationNanos {
			return 0, false
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, false
		}
		b = b[m:]
	}
	return failover.DurationMs(seconds, nanos), true
}

// withIndex returns a new encoding of the result response v viewed, with the
// utterance index set to index: its other fields as they were, in their order,
// the index last.
func withIndex(v *responseView, index int32) []byte {
	size := 0
	forEachField(v.payload, func(num protowire.Number, field []byte) {
		if num != resultIndex {
			size += len(field)
		}
	})
	if index != 0 {
		size += 1 + protowire.SizeVarint(uint64(int64(index)))
	}
	out := make([]byte, 0, 1+protowire.SizeVarint(uint64(size))+size)
	out = protowire.AppendTag(out, respResult, protowire.BytesType)
	out = protowire.AppendVarint(out, uint64(size))
	forEachField(v.payload, func(num protowire.Number, field []byte) {
		if num != resultIndex {
			out = append(out, field...)
		}
	})
	if index != 0 {
		out = protowire.AppendTag(out, resultIndex, protowire.VarintType)
		out = protowire.AppendVarint(out, uint64(int64(index)))
	}
	return out
}

// forEachField calls f with the number and the whole encoding (tag included) of
// each field of b, an encoding viewResponse already read.
func forEachField(b []byte, f func(num protowire.Number, field []byte)) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		f(num, b[:n+m])
		b = b[n+m:]
	}
}
