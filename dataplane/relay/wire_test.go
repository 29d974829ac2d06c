package relay

import (
	"bytes"
	"testing"
	"time"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/voxmesh/voxmesh/dataplane/failover"
	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

func audioRequest(audio []byte) []byte {
	raw, err := proto.Marshal(&sttv1.StreamingRecognizeRequest{
		StreamingRequest: &sttv1.StreamingRecognizeRequest_AudioContent{AudioContent: audio}})
	if err != nil {
		panic(err)
	}
	return raw
}

func TestParseRequestKeepsACanonicalRequestInPlace(t *testing.T) {
	audio := bytes.Repeat([]byte{7, 9}, 300)
	raw := audioRequest(audio)
	req, err := parseRequest(raw)
	if err != nil || req.bad != nil || !bytes.Equal(req.audio, audio) {
		t.Fatalf("parseRequest: %v %v", req, err)
	}
	if unsafe.SliceData(req.audio) != &raw[len(raw)-len(audio)] {
		t.Error("the audio of a canonical request was copied")
	}
	if unsafe.SliceData(req.raw) != unsafe.SliceData(raw) || len(req.raw) != len(raw) {
		t.Error("the request of a canonical chunk is not the client's bytes")
	}
}

func TestParseRequestLaysOutOtherEncodings(t *testing.T) {
	audio := []byte{1, 2, 3, 4}
	unknown := protowire.AppendVarint(protowire.AppendTag(audioRequest(audio), 9, protowire.VarintType), 5)
	longLength := append([]byte{audioTag, 0x84, 0x00}, audio...) // 4, not minimally encoded
	twice := append(audioRequest([]byte{9, 9}), audioRequest(audio)...)
	for name, raw := range map[string][]byte{"unknown field": unknown, "long length": longLength, "twice": twice} {
		req, err := parseRequest(raw)
		if err != nil || req.bad != nil || !bytes.Equal(req.audio, audio) {
			t.Errorf("%s: parseRequest %v %v", name, req, err)
			continue
		}
		if !bytes.Equal(req.raw, audioRequest(audio)) ||
			unsafe.SliceData(req.audio) != &req.raw[len(req.raw)-len(audio)] {
			t.Errorf("%s: request of the chunk %x", name, req.raw)
		}
	}
}

func TestParseRequestRefusesWhatIsNotAudio(t *testing.T) {
	config, _ := proto.Marshal(&sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_StreamingConfig{
		StreamingConfig: &sttv1.StreamingRecognitionConfig{StreamId: "x"}}})
	for name, raw := range map[string][]byte{"config": config, "neither": {}} {
		req, err := parseRequest(raw)
		if err != nil || req.bad == nil {
			t.Errorf("%s: parseRequest %v %v", name, req, err)
		}
	}
	if req, err := parseRequest([]byte{audioTag, 5, 1}); err == nil {
		t.Errorf("a truncated request parsed: %v", req)
	}
	if req, err := parseRequest(emptyAudio); err != nil || req.bad != nil || len(req.audio) != 0 {
		t.Errorf("an empty chunk: %v %v", req, err)
	}
}

// The chunks a ReplayLog returns become requests: the client's bytes for whole
// chunks, a new encoding for the cut first one after a restart.
func TestRequestsOfTheLogsChunks(t *testing.T) {
	log, err := failover.NewReplayLog(failover.ReplayConfig{Linear16: true, SampleRate: 16000, ReplayMaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var raws [][]byte
	for i := 0; i < 4; i++ {
		raw := audioRequest(bytes.Repeat([]byte{byte(i)}, 3200)) // 100 ms each
		raws = append(raws, raw)
		req, _ := parseRequest(raw)
		log.AppendRequest(req.audio, req.raw)
	}
	log.Restart()
	for i := 0; i < 4; i++ {
		audio, raw, _ := log.NextRequest()
		if got := requestOf(audio, raw); unsafe.SliceData(got) != unsafe.SliceData(raws[i]) || len(got) != len(raws[i]) {
			t.Fatalf("chunk %d: request %x, not the client's bytes", i, got[:8])
		}
	}
	log.Commit(150, 0, "") // the resume point falls in the second chunk
	log.Restart()
	audio, raw, _ := log.NextRequest()
	if got := requestOf(audio, raw); raw != nil || !bytes.Equal(got, audioRequest(bytes.Repeat([]byte{1}, 1600))) {
		t.Errorf("the cut chunk's request %x (kept %v)", got[:8], raw != nil)
	}
	audio, raw, _ = log.NextRequest()
	if got := requestOf(audio, raw); unsafe.SliceData(got) != unsafe.SliceData(raws[2]) {
		t.Errorf("the next whole chunk's request %x, not the client's bytes", got[:8])
	}
	if got := requestOf(nil, nil); !bytes.Equal(got, audioRequest([]byte{})) || len(got) != 2 {
		t.Errorf("an empty chunk's request %x", got)
	}
}

func d(ms int64) *durationpb.Duration { return durationpb.New(durationOfMs(ms)) }

func result(r *sttv1.StreamingRecognitionResult) *sttv1.StreamingRecognizeResponse {
	return &sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_Result{Result: r}}
}

func TestViewResponseReadsWhatDecodingReads(t *testing.T) {
	responses := []*sttv1.StreamingRecognizeResponse{
		result(&sttv1.StreamingRecognitionResult{
			Alternatives: []*sttv1.SpeechRecognitionAlternative{
				{Transcript: "u3 0badcafe", Confidence: 0.9, Words: []*sttv1.WordInfo{{Word: "u3", StartOffset: d(3000)}}},
				{Transcript: "second"},
			},
			IsFinal: true, Stability: 1, StartOffset: d(3000), EndOffset: d(3999), UtteranceIndex: 3, LanguageCode: "en",
		}),
		result(&sttv1.StreamingRecognitionResult{IsFinal: false, EndOffset: d(-1500), UtteranceIndex: -2}),
		result(&sttv1.StreamingRecognitionResult{}),
		{StreamingResponse: &sttv1.StreamingRecognizeResponse_SpeechEvent{SpeechEvent: &sttv1.SpeechEvent{
			Type: sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_STARTED, Offset: d(1234)}}},
		{StreamingResponse: &sttv1.StreamingRecognizeResponse_SpeechEvent{SpeechEvent: &sttv1.SpeechEvent{
			Type: sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_ENDED, Offset: d(5678)}}},
		{StreamingResponse: &sttv1.StreamingRecognizeResponse_Summary{Summary: &sttv1.StreamSummary{InstanceId: "a"}}},
		{},
	}
	for _, resp := range responses {
		raw, _ := proto.Marshal(resp)
		v, ok := viewResponse(raw)
		if !ok {
			t.Errorf("%v: not viewed", resp)
			continue
		}
		want := expectedView(resp)
		v.payload = nil
		if v.kind != want.kind || v.index != want.index || v.final != want.final || v.startMs != want.startMs ||
			v.endMs != want.endMs || string(v.text) != string(want.text) || v.started != want.started ||
			v.offsetMs != want.offsetMs {
			t.Errorf("%v: viewed %+v, want %+v", resp, v, want)
		}
	}
}

func expectedView(resp *sttv1.StreamingRecognizeResponse) responseView {
	ms := func(d *durationpb.Duration) float64 { return failover.DurationMs(d.GetSeconds(), d.GetNanos()) }
	switch {
	case resp.GetResult() != nil:
		r := resp.GetResult()
		v := responseView{kind: kindResult, index: r.GetUtteranceIndex(), final: r.GetIsFinal(),
			startMs: ms(r.GetStartOffset()), endMs: ms(r.GetEndOffset())}
		if len(r.GetAlternatives()) > 0 {
			v.text = []byte(r.GetAlternatives()[0].GetTranscript())
		}
		return v
	case resp.GetSpeechEvent() != nil:
		e := resp.GetSpeechEvent()
		return responseView{kind: kindEvent, offsetMs: ms(e.GetOffset()),
			started: e.GetType() == sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_STARTED}
	case resp.GetSummary() != nil:
		return responseView{kind: kindSummary}
	}
	return responseView{}
}

func TestViewResponseLeavesOtherEncodingsToDecoding(t *testing.T) {
	final, _ := proto.Marshal(result(&sttv1.StreamingRecognitionResult{IsFinal: true, EndOffset: d(1000)}))
	event, _ := proto.Marshal(&sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_SpeechEvent{
		SpeechEvent: &sttv1.SpeechEvent{Offset: d(5)}}})
	endTwice := protowire.AppendBytes(protowire.AppendTag(nil, resultEnd, protowire.BytesType),
		protowire.AppendVarint(protowire.AppendTag(nil, durationNanos, protowire.VarintType), 7))
	cases := map[string][]byte{
		"two results":     append(append([]byte{}, final...), final...),
		"unknown field":   protowire.AppendVarint(protowire.AppendTag(append([]byte{}, final...), 15, protowire.VarintType), 1),
		"result then evt": append(append([]byte{}, final...), event...),
		"end twice": protowire.AppendBytes(protowire.AppendTag(nil, respResult, protowire.BytesType),
			append(append([]byte{}, final[2:]...), endTwice...)),
		"truncated": final[:len(final)-1],
	}
	for name, raw := range cases {
		if _, ok := viewResponse(raw); ok {
			t.Errorf("%s: viewed in place", name)
		}
	}
}

func TestWithIndexChangesTheIndexAlone(t *testing.T) {
	base := result(&sttv1.StreamingRecognitionResult{
		Alternatives: []*sttv1.SpeechRecognitionAlternative{{Transcript: "u1 00000001"}},
		IsFinal:      true, StartOffset: d(1000), EndOffset: d(2000), UtteranceIndex: 1, LanguageCode: "en",
	})
	for _, index := range []int32{0, 1, 5, 300, -1} {
		raw, _ := proto.Marshal(base)
		v, _ := viewResponse(raw)
		var got sttv1.StreamingRecognizeResponse
		if err := proto.Unmarshal(withIndex(&v, index), &got); err != nil {
			t.Fatal(err)
		}
		want := proto.Clone(base).(*sttv1.StreamingRecognizeResponse)
		want.GetResult().UtteranceIndex = index
		if !proto.Equal(&got, want) {
			t.Errorf("index %d: %v, want %v", index, &got, want)
		}
	}
}

func durationOfMs(ms int64) time.Duration { return time.Duration(ms) * time.Millisecond }
