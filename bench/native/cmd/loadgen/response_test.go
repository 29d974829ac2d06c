package main

import (
	"testing"

	"google.golang.org/protobuf/proto"

	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

func TestIsInterim(t *testing.T) {
	result := func(final bool) *sttv1.StreamingRecognizeResponse {
		return &sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_Result{
			Result: &sttv1.StreamingRecognitionResult{
				IsFinal:        final,
				Stability:      0.5,
				UtteranceIndex: 3,
				Alternatives:   []*sttv1.SpeechRecognitionAlternative{{Transcript: "u3 0badf00d"}},
				LanguageCode:   "en",
			},
		}}
	}
	event := &sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_SpeechEvent{
		SpeechEvent: &sttv1.SpeechEvent{Type: sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_STARTED},
	}}
	summary := &sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_Summary{
		Summary: &sttv1.StreamSummary{InstanceId: "a", FinalResults: 1},
	}}
	encode := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name string
		msg  []byte
		want bool
	}{
		{"interim", encode(result(false)), true},
		{"final", encode(result(true)), false},
		{"speech event", encode(event), false},
		{"summary", encode(summary), false},
		{"empty", nil, false},
		{"final then interim merge (false is not encoded)", append(encode(result(true)), encode(result(false))...), false},
		{"interim then final merge", append(encode(result(false)), encode(result(true))...), false},
		{"interim then event", append(encode(result(false)), encode(event)...), false},
		{"final, event, interim", append(append(encode(result(true)), encode(event)...), encode(result(false))...), true},
	}
	for _, c := range cases {
		got, err := isInterim(c.msg)
		if err != nil || got != c.want {
			t.Errorf("%s: isInterim = %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	if _, err := isInterim([]byte{0x0a, 0x05, 0x01}); err == nil {
		t.Error("truncated message: want an error")
	}
}
