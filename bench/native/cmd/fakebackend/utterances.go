package main

import (
	"fmt"
	"hash/crc32"
	"math"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// utterances is the bookkeeping of one stream, _Stream of
// tests/doubles/fake_asr.py: the stream is cut into utterances of a fixed
// stream time, each opened by a SPEECH_STARTED event and closed by a
// SPEECH_ENDED event and a final result "u<k> <crc32 of its audio>"; with
// interim results on, every interimEvery-th chunk gets one interim result.
type utterances struct {
	rate          int64 // samples per second
	interimEvery  int
	chunks        int
	windowSamples int64 // samples per utterance
	sample        int64 // stream time reached, in samples
	index         int32 // utterance index of the open utterance
	crc           uint32
	open          bool // the open utterance has audio
	finals        int32
	received      int64 // samples received
	emit          func(*sttv1.StreamingRecognizeResponse) error
}

func newUtterances(rate int64, utteranceMs int64, interimEvery int,
	emit func(*sttv1.StreamingRecognizeResponse) error) *utterances {
	return &utterances{rate: rate, interimEvery: interimEvery, windowSamples: utteranceMs * rate / 1000, emit: emit}
}

// duration is the stream time of sample.
func (u *utterances) duration(sample int64) *durationpb.Duration {
	return durationpb.New(time.Duration(math.Round(float64(sample) * 1e9 / float64(u.rate))))
}

// feed takes one chunk of 16-bit samples and emits what it completes.
func (u *utterances) feed(data []byte, interim bool) error {
	samples := int64(len(data) / 2)
	u.received += samples
	u.chunks++
	for pos := int64(0); pos < samples; {
		window := u.sample / u.windowSamples
		boundary := (window + 1) * u.windowSamples
		step := min(samples-pos, boundary-u.sample)
		if !u.open {
			u.open = true
			if err := u.event(sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_STARTED); err != nil {
				return err
			}
		}
		u.crc = crc32.Update(u.crc, crc32.IEEETable, data[pos*2:(pos+step)*2])
		u.sample += step
		pos += step
		if u.sample == boundary {
			if err := u.close(window); err != nil {
				return err
			}
		}
	}
	if interim && u.open && u.chunks%u.interimEvery == 0 {
		return u.result(u.sample/u.windowSamples, false)
	}
	return nil
}

// finish closes the open utterance, if it has audio (the client half-closed).
func (u *utterances) finish() error {
	if !u.open {
		return nil
	}
	return u.close((u.sample - 1) / u.windowSamples)
}

func (u *utterances) close(window int64) error {
	if err := u.event(sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_ENDED); err != nil {
		return err
	}
	if err := u.result(window, true); err != nil {
		return err
	}
	u.index++
	u.finals++
	u.crc = 0
	u.open = false
	return nil
}

func (u *utterances) result(window int64, final bool) error {
	stability := float32(0.5)
	if final {
		stability = 1
	}
	return u.emit(&sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_Result{
		Result: &sttv1.StreamingRecognitionResult{
			Alternatives: []*sttv1.SpeechRecognitionAlternative{
				{Transcript: fmt.Sprintf("u%d %08x", window, u.crc), Confidence: 0.9},
			},
			IsFinal:        final,
			Stability:      stability,
			StartOffset:    u.duration(window * u.windowSamples),
			EndOffset:      u.duration(u.sample),
			UtteranceIndex: u.index,
			LanguageCode:   "en",
		},
	}})
}

func (u *utterances) event(kind sttv1.SpeechEventType) error {
	return u.emit(&sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_SpeechEvent{
		SpeechEvent: &sttv1.SpeechEvent{Type: kind, Offset: u.duration(u.sample)},
	}})
}
