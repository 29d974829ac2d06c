// Package fakeasr is the recognition of the Go test and benchmark doubles of an
// ASR instance, as tests/doubles/fake_asr.py recognises: no model, the stream is
// cut into utterances of a fixed window of stream time, each opened by a
// SPEECH_STARTED event and closed by a SPEECH_ENDED event and the final result
// "u<k> <crc32 of its audio>" ending at the utterance's end. The same audio
// therefore gives the same finals whatever the chunking, the double, or a
// failover replay in between.
//
// Audio is taken as 16-bit samples; a double that does not decode container
// audio counts its bytes as 16 kHz samples. The gRPC service around it
// (admission, config checks, the summary) stays with each double.
package fakeasr

import (
	"fmt"
	"hash/crc32"
	"math"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// Config is how a Stream recognises.
type Config struct {
	// Rate is the samples per second of the audio.
	Rate int64
	// UtteranceMs is the stream time per utterance (one final each).
	UtteranceMs int64
	// InterimEvery gives one interim result per this many audio chunks while an
	// utterance has audio (0: no interim results).
	InterimEvery int
	// OffsetMs is the stream time of the first sample (voxmesh-offset-ms).
	OffsetMs int64
	// SkipUntilMs is the stream time before which audio is skipped and gets no
	// result (a failover's skip and lead-in).
	SkipUntilMs int64
}

// Stream is the recognition of one stream (fake_asr._Stream).
type Stream struct {
	rate, windowSamples int64
	sample, skipUntil   int64 // stream time reached, and the end of what is skipped, in samples
	received            int64 // samples received
	index               int32 // utterance index of the open utterance, local to this stream
	crc                 uint32
	open                bool // the current utterance has audio
	finals              int32
	interimEvery        int
	chunks              int
	send                func(*sttv1.StreamingRecognizeResponse) error
}

// New starts the recognition of a stream; send takes each response it makes.
func New(c Config, send func(*sttv1.StreamingRecognizeResponse) error) *Stream {
	return &Stream{
		rate: c.Rate, windowSamples: c.UtteranceMs * c.Rate / 1000,
		sample: c.OffsetMs * c.Rate / 1000, skipUntil: c.SkipUntilMs * c.Rate / 1000,
		interimEvery: c.InterimEvery, send: send,
	}
}

// Sample is the stream time reached, in samples.
func (s *Stream) Sample() int64 { return s.sample }

// Processed is the stream time of the audio received (skipped audio included).
func (s *Stream) Processed() *durationpb.Duration { return s.duration(s.received) }

// Finals is the number of final results sent.
func (s *Stream) Finals() int32 { return s.finals }

func (s *Stream) duration(sample int64) *durationpb.Duration {
	return durationpb.New(time.Duration(math.Round(float64(sample) * 1e9 / float64(s.rate))))
}

// Feed takes one chunk of 16-bit samples and sends what it completes.
func (s *Stream) Feed(data []byte) error {
	samples := int64(len(data) / 2)
	s.received += samples
	s.chunks++
	for pos := int64(0); pos < samples; {
		if s.sample < s.skipUntil {
			step := min(samples-pos, s.skipUntil-s.sample)
			s.sample += step
			pos += step
			continue
		}
		window := s.sample / s.windowSamples
		boundary := (window + 1) * s.windowSamples
		step := min(samples-pos, boundary-s.sample)
		if !s.open {
			s.open = true
			if err := s.event(sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_STARTED); err != nil {
				return err
			}
		}
		s.crc = crc32.Update(s.crc, crc32.IEEETable, data[pos*2:(pos+step)*2])
		s.sample += step
		pos += step
		if s.sample == boundary {
			if err := s.close(window); err != nil {
				return err
			}
		}
	}
	if s.interimEvery > 0 && s.open && s.chunks%s.interimEvery == 0 {
		return s.result(s.sample/s.windowSamples, false)
	}
	return nil
}

// Finish closes the open utterance, if it has audio (the client half-closed).
func (s *Stream) Finish() error {
	if !s.open {
		return nil
	}
	return s.close((s.sample - 1) / s.windowSamples)
}

func (s *Stream) close(window int64) error {
	if err := s.event(sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_ENDED); err != nil {
		return err
	}
	if err := s.result(window, true); err != nil {
		return err
	}
	s.index++
	s.finals++
	s.crc = 0
	s.open = false
	return nil
}

func (s *Stream) result(window int64, final bool) error {
	stability := float32(0.5)
	if final {
		stability = 1
	}
	return s.send(&sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_Result{
		Result: &sttv1.StreamingRecognitionResult{
			Alternatives:   []*sttv1.SpeechRecognitionAlternative{{Transcript: FinalText(window, s.crc), Confidence: 0.9}},
			IsFinal:        final,
			Stability:      stability,
			StartOffset:    s.duration(max(window*s.windowSamples, s.skipUntil)),
			EndOffset:      s.duration(s.sample),
			UtteranceIndex: s.index,
			LanguageCode:   "en",
		}}})
}

func (s *Stream) event(kind sttv1.SpeechEventType) error {
	return s.send(&sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_SpeechEvent{
		SpeechEvent: &sttv1.SpeechEvent{Type: kind, Offset: s.duration(s.sample)}}})
}

// FinalText is the transcript of utterance window with audio CRC crc
// (fake_asr.final_text).
func FinalText(window int64, crc uint32) string { return fmt.Sprintf("u%d %08x", window, crc) }

// ExpectedFinals returns the transcripts of the finals given a whole LINEAR16
// stream of pcm at rate, without failover (fake_asr.expected_finals).
func ExpectedFinals(pcm []byte, rate, utteranceMs int64) []string {
	perWindow := int(utteranceMs * rate / 1000 * 2)
	var out []string
	for k, i := 0, 0; i < len(pcm); k, i = k+1, i+perWindow {
		out = append(out, FinalText(int64(k), crc32.ChecksumIEEE(pcm[i:min(i+perWindow, len(pcm))])))
	}
	return out
}
