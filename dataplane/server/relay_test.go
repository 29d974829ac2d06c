package server_test

// The native StreamingRecognize relay through a whole data path: a control plane
// double, fake instances on real gRPC servers, the test as the client.

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/voxmesh/voxmesh/dataplane/internal/controldouble"
	"github.com/voxmesh/voxmesh/dataplane/internal/fakeinstance"
	"github.com/voxmesh/voxmesh/dataplane/server"
	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

const (
	done   = routerv1.AttemptEndedEvent_OUTCOME_DONE
	full   = routerv1.AttemptEndedEvent_OUTCOME_FULL
	failed = routerv1.AttemptEndedEvent_OUTCOME_FAILED
)

func summaryOf(t *testing.T, rs []*sttv1.StreamingRecognizeResponse) *sttv1.StreamSummary {
	t.Helper()
	if len(rs) == 0 || rs[len(rs)-1].GetSummary() == nil {
		t.Fatalf("the stream did not end with a summary")
	}
	return rs[len(rs)-1].GetSummary()
}

func TestRelaysAStreamEndToEnd(t *testing.T) {
	a := instance(t, "a")
	double := &controldouble.Double{Place: placeOn(a)}
	h := start(t, double, nil, nil)
	audio := pcm(3500)

	c := h.open("")
	c.send(audio)
	rs, err := c.finish()
	if err != nil {
		t.Fatalf("stream ended with %v", err)
	}

	texts, indices := finals(rs)
	if want := fakeinstance.ExpectedFinals(audio, rate, utteranceMs); !reflect.DeepEqual(texts, want) {
		t.Errorf("finals %q, want %q", texts, want)
	}
	if !reflect.DeepEqual(indices, []int32{0, 1, 2, 3}) {
		t.Errorf("utterance indices %v", indices)
	}
	s := nextStream(t, double)
	ended(t, s)
	route := s.Events()[0].GetOpen().GetFirstRequest()
	if route.GetStreamingConfig().GetConfig().GetSampleRateHertz() != rate {
		t.Errorf("open carried %v, not the client's config", route)
	}
	summary := summaryOf(t, rs)
	if summary.GetStreamId() == "" || summary.GetFailovers() != 0 || summary.GetFinalResults() != 4 ||
		summary.GetInstanceId() != "a" || !proto.Equal(summary.GetAudioProcessed(), durationpb.New(3500*time.Millisecond)) {
		t.Errorf("summary %v", summary)
	}
	outs, finished := outcomes(s)
	if !reflect.DeepEqual(outs, []routerv1.AttemptEndedEvent_Outcome{done}) {
		t.Errorf("outcomes %v", outs)
	}
	events := s.Events()
	if last := events[len(events)-1]; finished.GetCode() != 0 || last.GetFinished() == nil ||
		math.Abs(last.GetAudioSeconds()-3.5) > 1e-9 {
		t.Errorf("finished %v, last event %v", finished, last)
	}
	if s.Err() != nil || s.Cancelled() {
		t.Errorf("the Attach call ended with %v (cancelled %v), not OK", s.Err(), s.Cancelled())
	}
	// Two events for a stream served by one instance in under latencyFlushEvery:
	// open asks for the instance, finished ends the attempt and carries the
	// latencies; the placement came with the route, one answer.
	if len(events) != 2 || !events[0].GetOpen().GetPlace() || finished.GetLastAttempt() != done {
		t.Errorf("events %v", events)
	}
	if answers := s.Answers(); len(answers) != 1 || answers[0].GetRoute().GetPlacement().GetInstanceId() != "a" {
		t.Errorf("answers %v", answers)
	}
	// 35 requests and over 40 responses: one in 8 of each is timed.
	up, down := len(finished.GetLatency().GetUpstreamSeconds()), len(finished.GetLatency().GetDownstreamSeconds())
	if up != 35/8 || down < 5 {
		t.Errorf("%d upstream and %d downstream latency samples", up, down)
	}
}

func TestARefusingInstanceIsNotAFailure(t *testing.T) {
	for _, refusal := range []string{"full", "not accepting"} {
		t.Run(refusal, func(t *testing.T) {
			a, b := instance(t, "a"), instance(t, "b")
			if refusal == "full" {
				a.SetMaxStreams(-1)
			} else {
				a.RefuseAsStarting(1)
			}
			double := &controldouble.Double{Place: placeOn(a, b)}
			h := start(t, double, nil, nil)
			audio := pcm(1500)
			c := h.open("s1")
			c.send(audio)
			rs, err := c.finish()
			if err != nil {
				t.Fatalf("stream ended with %v", err)
			}
			texts, _ := finals(rs)
			if want := fakeinstance.ExpectedFinals(audio, rate, utteranceMs); !reflect.DeepEqual(texts, want) {
				t.Errorf("finals %q, want %q", texts, want)
			}
			summary := summaryOf(t, rs)
			if summary.GetInstanceId() != "b" || summary.GetFailovers() != 0 || summary.GetStreamId() != "s1" {
				t.Errorf("summary %v", summary)
			}
			s := nextStream(t, double)
			ended(t, s)
			if outs, _ := outcomes(s); !reflect.DeepEqual(outs, []routerv1.AttemptEndedEvent_Outcome{full, done}) {
				t.Errorf("outcomes %v", outs)
			}
		})
	}
}

func TestFailsOverAKilledInstanceWithoutRepeatingAFinal(t *testing.T) {
	a, b := instance(t, "a"), instance(t, "b")
	double := &controldouble.Double{Place: placeOn(a, b)}
	h := start(t, double, nil, nil)
	audio := pcm(3500)

	c := h.open("")
	c.send(audio[:25*chunkBytes])
	c.waitFor("two finals", func(rs []*sttv1.StreamingRecognizeResponse) bool { return countFinals(rs) == 2 })
	a.Kill()
	c.send(audio[25*chunkBytes:])
	rs, err := c.finish()
	if err != nil {
		t.Fatalf("stream ended with %v", err)
	}

	texts, indices := finals(rs)
	if want := fakeinstance.ExpectedFinals(audio, rate, utteranceMs); !reflect.DeepEqual(texts, want) {
		t.Errorf("finals %q, want %q", texts, want)
	}
	if !reflect.DeepEqual(indices, []int32{0, 1, 2, 3}) {
		t.Errorf("utterance indices %v: b's are not renumbered after a's", indices)
	}
	for _, r := range rs {
		if res := r.GetResult(); res != nil && !res.GetIsFinal() && res.GetUtteranceIndex() < 2 &&
			res.GetEndOffset().AsDuration() > 2*time.Second {
			t.Errorf("an interim result of an utterance already final: %v", res)
		}
	}
	starts, ends := 0, 0
	for _, r := range rs {
		switch r.GetSpeechEvent().GetType() {
		case sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_STARTED:
			starts++
		case sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_ENDED:
			ends++
		}
	}
	if starts != 4 || ends != 4 {
		t.Errorf("%d speech starts and %d ends for 4 utterances", starts, ends)
	}
	summary := summaryOf(t, rs)
	if summary.GetFailovers() != 1 || summary.GetInstanceId() != "b" || summary.GetFinalResults() != 4 {
		t.Errorf("summary %v", summary)
	}
	// b got the replay from the start of the context (15 s of finals), 2 s of it
	// a lead-in.
	if got := b.Stats().Resumes; !reflect.DeepEqual(got, []fakeinstance.Resume{{LeadInMs: 2000}}) {
		t.Errorf("b's resume metadata %v", got)
	}
	s := nextStream(t, double)
	ended(t, s)
	if outs, _ := outcomes(s); !reflect.DeepEqual(outs, []routerv1.AttemptEndedEvent_Outcome{failed, done}) {
		t.Errorf("outcomes %v", outs)
	}
}

func TestEndsAStreamWhoseFinalsCoverItAllWhenItsInstanceFails(t *testing.T) {
	a := instance(t, "a")
	double := &controldouble.Double{Place: placeOn(a)}
	h := start(t, double, nil, nil)
	audio := pcm(2000)

	c := h.open("s2")
	c.send(audio)
	c.waitFor("two finals", func(rs []*sttv1.StreamingRecognizeResponse) bool { return countFinals(rs) == 2 })
	a.Kill()
	s := nextStream(t, double)
	eventually(t, "the failure reported", func() bool { outs, _ := outcomes(s); return len(outs) == 1 }, s.Changed)
	rs, err := c.finish()
	if err != nil {
		t.Fatalf("stream ended with %v", err)
	}
	summary := summaryOf(t, rs)
	if summary.GetInstanceId() != "a" || summary.GetModel() != "tiny.en" || summary.GetPool() != "asr_small" ||
		summary.GetFailovers() != 1 || summary.GetFinalResults() != 2 || summary.GetStreamId() != "s2" ||
		!proto.Equal(summary.GetAudioProcessed(), durationpb.New(2*time.Second)) {
		t.Errorf("the relay's summary %v", summary)
	}
	ended(t, s)
	outs, finished := outcomes(s)
	if !reflect.DeepEqual(outs, []routerv1.AttemptEndedEvent_Outcome{failed}) || finished.GetCode() != 0 {
		t.Errorf("outcomes %v, finished %v", outs, finished)
	}
}

func TestRejectsAStreamThatStallsAfterAFailover(t *testing.T) {
	a := instance(t, "a")
	rejects := make(chan *routerv1.RejectEvent, 1)
	double := &controldouble.Double{
		Route: func(first *sttv1.StreamingRecognizeRequest) (*routerv1.RouteEvent, error) {
			limits := controldouble.DefaultLimits()
			limits.IdleTimeoutMs = 50
			return controldouble.DefaultRoute(first, "asr_small", limits)
		},
		Place: placeOn(a),
		Reject: func(_ *controldouble.Stream, r *routerv1.RejectEvent) error {
			rejects <- r
			return status.Error(codes.OutOfRange, "no audio received")
		},
	}
	h := start(t, double, nil, nil)
	c := h.open("")
	c.send(pcm(1000))
	c.waitFor("a final", func(rs []*sttv1.StreamingRecognizeResponse) bool { return countFinals(rs) == 1 })
	a.Kill()
	_, err := c.wait()
	if status.Code(err) != codes.OutOfRange || status.Convert(err).Message() != "no audio received" {
		t.Errorf("stream ended with %v", err)
	}
	if r := <-rejects; r.GetStalledWaitingFor() != "audio" {
		t.Errorf("rejected with %v", r)
	}
}

func TestRelaysTheStatusOfARejectedRequest(t *testing.T) {
	a := instance(t, "a")
	rejects := make(chan *routerv1.AttachRequest, 1)
	double := &controldouble.Double{
		Place: placeOn(a),
		Reject: func(s *controldouble.Stream, _ *routerv1.RejectEvent) error {
			events := s.Events()
			rejects <- events[len(events)-1]
			s.SetTrailer(metadata.Pairs("x-why", "odd"))
			st, _ := status.New(codes.InvalidArgument, "LINEAR16 audio chunk has an odd length (3 bytes)").
				WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "audio_content"}}})
			return st.Err()
		},
	}
	h := start(t, double, nil, nil)
	c := h.open("")
	c.send(pcm(300))
	c.waitFor("a result", func(rs []*sttv1.StreamingRecognizeResponse) bool { return len(rs) > 0 })
	c.sendRequest(&sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_AudioContent{AudioContent: []byte{1, 2, 3}}})
	_, err := c.wait()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || st.Message() != "LINEAR16 audio chunk has an odd length (3 bytes)" ||
		len(st.Details()) != 1 || st.Details()[0].(*errdetails.BadRequest).GetFieldViolations()[0].GetField() != "audio_content" {
		t.Errorf("stream ended with %v (details %v)", st, st.Details())
	}
	if got := c.call.Trailer().Get("x-why"); !reflect.DeepEqual(got, []string{"odd"}) {
		t.Errorf("trailer x-why %q", got)
	}
	// The chunk's length, not the chunk; the audio before it is counted.
	if r := <-rejects; r.GetReject().GetBadChunkBytes() != 3 || math.Abs(r.GetAudioSeconds()-0.3) > 1e-9 {
		t.Errorf("rejected with %v", r)
	}
	eventually(t, "a's stream cancelled", func() bool { return a.Stats().Cancelled == 1 }, a.Changed)
}

func TestRelaysTheControlPlanesStatus(t *testing.T) {
	queueFull := func(s *controldouble.Stream, _ int) (*routerv1.PlacementEvent, error) {
		s.SetTrailer(metadata.Pairs("retry-after-ms", "2000"))
		st, _ := status.New(codes.ResourceExhausted, "queue full").
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(2 * time.Second)})
		return nil, st.Err()
	}
	double := &controldouble.Double{Place: queueFull}
	h := start(t, double, nil, nil)

	c := h.open("")
	_, err := c.wait()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || st.Message() != "queue full" || len(st.Details()) != 1 ||
		st.Details()[0].(*errdetails.RetryInfo).GetRetryDelay().AsDuration() != 2*time.Second {
		t.Errorf("stream ended with %v (details %v)", st, st.Details())
	}
	if got := c.call.Trailer().Get("retry-after-ms"); !reflect.DeepEqual(got, []string{"2000"}) {
		t.Errorf("trailer retry-after-ms %q", got)
	}

	// A first request that is no config: the control plane refuses it at open.
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	call, err := h.client.StreamingRecognize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := call.Send(&sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_AudioContent{AudioContent: pcm(100)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := call.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("audio first: %v", err)
	}
	// No request at all: open without one, refused as well.
	call, err = h.client.StreamingRecognize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = call.CloseSend()
	if _, err := call.Recv(); status.Convert(err).Message() != "empty stream: the first request must carry streaming_config" {
		t.Errorf("no request: %v", err)
	}
}

func TestAClientThatLeavesCancelsItsInstanceCallAndAttach(t *testing.T) {
	a := instance(t, "a")
	double := &controldouble.Double{Place: placeOn(a)}
	h := start(t, double, nil, nil)
	c := h.open("")
	c.send(pcm(500))
	c.waitFor("a result", func(rs []*sttv1.StreamingRecognizeResponse) bool { return len(rs) > 0 })
	c.cancel()

	eventually(t, "a's stream cancelled", func() bool { return a.Stats().Cancelled == 1 }, a.Changed)
	s := nextStream(t, double)
	ended(t, s)
	if !s.Cancelled() {
		t.Errorf("the Attach call ended with %v, not cancelled", s.Err())
	}
	outs, finished := outcomes(s)
	if len(outs) != 0 || finished != nil {
		t.Errorf("a stream its client left reported outcomes %v, finished %v", outs, finished)
	}
	if n := a.Stats().Streams; n != 1 {
		t.Errorf("%d streams on a: the stream went on after its client left", n)
	}
}

func TestAStreamThatSendsNothingIsRejectedForItsStall(t *testing.T) {
	stall := status.Error(codes.OutOfRange, "no streaming_config received for 0.1 s")
	double := &controldouble.Double{
		Place: placeOn(instance(t, "a")),
		Reject: func(_ *controldouble.Stream, r *routerv1.RejectEvent) error {
			if r.GetStalledWaitingFor() != "streaming_config" {
				return status.Errorf(codes.Internal, "rejected with %v", r)
			}
			return stall
		},
	}
	h := start(t, double, nil, func(o *server.Options) { o.IdleTimeout = 100 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	call, err := h.client.StreamingRecognize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = call.Recv(); status.Code(err) != codes.OutOfRange || status.Convert(err).Message() != status.Convert(stall).Message() {
		t.Errorf("stream ended with %v", err)
	}
	s := nextStream(t, double)
	if events := s.Events(); len(events) != 1 {
		t.Errorf("events %v, want the reject alone", events)
	}
}

func TestTheControlPlaneRefusesAStreamBeforeItsFirstRequest(t *testing.T) {
	// The router drains: the client hears so without sending anything, long
	// before the idle timeout.
	double := &controldouble.Double{
		Place: placeOn(instance(t, "a")),
		Begin: func(*controldouble.Stream) error {
			return status.Error(codes.Unavailable, "the router is draining; retry on another router")
		},
	}
	h := start(t, double, nil, func(o *server.Options) { o.IdleTimeout = time.Hour })
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	call, err := h.client.StreamingRecognize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = call.Recv()
	if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "the router is draining; retry on another router" {
		t.Errorf("stream ended with %v", err)
	}
	if s := nextStream(t, double); len(s.Events()) != 0 {
		t.Errorf("events %v of a stream refused at its start", s.Events())
	}
}

func TestStreamsFailUnavailableWithoutAControlPlane(t *testing.T) {
	h := start(t, nil, nil, nil)
	c := h.open("")
	_, err := c.wait()
	if status.Code(err) != codes.Unavailable {
		t.Errorf("stream ended with %v", err)
	}
	// The data path goes on serving: the next stream fails alike.
	c = h.open("")
	if _, err := c.wait(); status.Code(err) != codes.Unavailable {
		t.Errorf("second stream ended with %v", err)
	}
}

func TestAQueuedStreamHoldsAtMostQueueMaxBytesAndSaysSo(t *testing.T) {
	a := instance(t, "a")
	release := make(chan struct{})
	place := placeOn(a)
	double := &controldouble.Double{
		Route: func(first *sttv1.StreamingRecognizeRequest) (*routerv1.RouteEvent, error) {
			limits := controldouble.DefaultLimits()
			limits.QueueMaxBytes = 3 * chunkBytes
			return controldouble.DefaultRoute(first, "asr_small", limits)
		},
		Place: func(s *controldouble.Stream, n int) (*routerv1.PlacementEvent, error) {
			<-release // the stream waits in the queue
			return place(s, n)
		},
	}
	h := start(t, double, nil, nil)
	audio := pcm(1000)
	c := h.open("")
	c.send(audio)
	s := nextStream(t, double)
	buffered := func() (last, most int64) {
		for _, ev := range s.Events() {
			if b := ev.GetBuffered(); b != nil {
				last, most = b.GetBytes(), max(most, b.GetBytes())
			}
		}
		return last, most
	}
	eventually(t, "three chunks buffered", func() bool { last, _ := buffered(); return last == 3*chunkBytes }, s.Changed)
	close(release)
	rs, err := c.finish()
	if err != nil {
		t.Fatalf("stream ended with %v", err)
	}
	if texts, _ := finals(rs); !reflect.DeepEqual(texts, fakeinstance.ExpectedFinals(audio, rate, utteranceMs)) {
		t.Errorf("finals %q", texts)
	}
	if _, most := buffered(); most != 3*chunkBytes {
		t.Errorf("%d bytes buffered while queued, over queue_max_bytes", most)
	}
}

func TestAnInstancesOwnStatusReachesTheClientUnchanged(t *testing.T) {
	a := instance(t, "a")
	double := &controldouble.Double{Place: placeOn(a)}
	h := start(t, double, nil, nil)
	c := h.open("")
	c.send(pcm(300))
	c.waitFor("a result", func(rs []*sttv1.StreamingRecognizeResponse) bool { return len(rs) > 0 })
	a.FailStreams(codes.FailedPrecondition)
	c.send(pcm(100))
	_, err := c.wait()
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != "fake instance failure" {
		t.Errorf("stream ended with %v", err)
	}
	s := nextStream(t, double)
	ended(t, s)
	outs, finished := outcomes(s)
	if !reflect.DeepEqual(outs, []routerv1.AttemptEndedEvent_Outcome{routerv1.AttemptEndedEvent_OUTCOME_ERROR}) ||
		finished.GetCode() != int32(codes.FailedPrecondition) {
		t.Errorf("outcomes %v, finished %v", outs, finished)
	}
}

func TestADeadlineThatPassesInTheQueueEndsAttach(t *testing.T) {
	double := &controldouble.Double{
		Place: func(s *controldouble.Stream, _ int) (*routerv1.PlacementEvent, error) {
			<-s.Context().Done() // no instance ever has room
			return nil, s.Context().Err()
		},
	}
	h := start(t, double, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	call, err := h.client.StreamingRecognize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := call.Send(&sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_StreamingConfig{
		StreamingConfig: &sttv1.StreamingRecognitionConfig{Config: &sttv1.RecognitionConfig{
			Encoding: sttv1.AudioEncoding_AUDIO_ENCODING_LINEAR16, SampleRateHertz: rate}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := call.Recv(); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("stream ended with %v", err)
	}
	s := nextStream(t, double)
	ended(t, s)
	if !s.Cancelled() {
		t.Errorf("the Attach call ended with %v, not cancelled", s.Err())
	}
}

func TestTheFirstInstanceIsAskedForWithOpen(t *testing.T) {
	// The control plane routes the stream only once the test says so, and has no
	// instance with room at once: the placement follows the route on its own.
	release, room := make(chan struct{}), make(chan struct{})
	place := placeOn(instance(t, "a"))
	double := &controldouble.Double{
		Place: func(s *controldouble.Stream, n int) (*routerv1.PlacementEvent, error) {
			<-room
			return place(s, n)
		},
		Route: func(first *sttv1.StreamingRecognizeRequest) (*routerv1.RouteEvent, error) {
			<-release
			return controldouble.DefaultRoute(first, "asr_small", controldouble.DefaultLimits())
		},
	}
	h := start(t, double, nil, nil)
	c := h.open("")
	c.send(pcm(300))
	s := nextStream(t, double)
	eventually(t, "open asking for an instance", func() bool {
		events := s.Events()
		return len(events) >= 1 && events[0].GetOpen().GetPlace()
	}, s.Changed)
	close(release)
	eventually(t, "the route without a placement", func() bool { return len(s.Answers()) == 1 }, s.Changed)
	if a := s.Answers()[0]; a.GetRoute() == nil || a.GetRoute().GetPlacement() != nil {
		t.Errorf("first answer %v", a)
	}
	close(room)
	c.waitFor("a result", func(rs []*sttv1.StreamingRecognizeResponse) bool { return len(rs) > 0 })
	for _, ev := range s.Events() {
		if ev.GetPlace() != nil {
			t.Errorf("a place event for the first attempt: %v", s.Events())
		}
	}
	if answers := s.Answers(); len(answers) != 2 || answers[1].GetPlacement().GetInstanceId() != "a" {
		t.Errorf("answers %v", answers)
	}
}

func TestStreamsShareOneConnectCallAndANewOneFollowsItsLoss(t *testing.T) {
	a := instance(t, "a")
	double := &controldouble.Double{Place: placeOn(a)}
	h := start(t, double, nil, nil)
	streams := []*clientStream{h.open(""), h.open(""), h.open("")}
	for _, c := range streams {
		c.send(pcm(500))
		c.waitFor("a result", func(rs []*sttv1.StreamingRecognizeResponse) bool { return len(rs) > 0 })
	}
	if n := double.Connects(); n != 1 {
		t.Errorf("%d Connect calls for 3 streams", n)
	}

	// The control plane goes away: every stream it carried fails, as its own
	// Attach call would have.
	h.stopControl()
	for _, c := range streams {
		if _, err := c.wait(); status.Code(err) != codes.Unavailable {
			t.Errorf("stream ended with %v, not UNAVAILABLE", err)
		}
	}

	// It comes back: a new Connect call carries the next streams.
	again := &controldouble.Double{Place: placeOn(a)}
	stop, err := again.Serve(filepath.Join(h.dir, "control.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(waitLimit)
	for {
		c := h.open("")
		audio := pcm(1500)
		c.send(audio)
		rs, err := c.finish()
		if err == nil {
			if texts, _ := finals(rs); !reflect.DeepEqual(texts, fakeinstance.ExpectedFinals(audio, rate, utteranceMs)) {
				t.Errorf("finals %q", texts)
			}
			break
		}
		// Until the data path's connection is back (its backoff is 2 s at most),
		// a stream fails at once with UNAVAILABLE.
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("stream after the control plane came back ended with %v", err)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-time.After(time.Until(deadline)):
		}
	}
	if n := again.Connects(); n != 1 {
		t.Errorf("%d Connect calls after the loss", n)
	}
}

func TestEventsGatheredAfterABatchGoTogether(t *testing.T) {
	a := instance(t, "a")
	double := &controldouble.Double{Place: placeOn(a)}
	// A long wait, so that the streams below open within it however slow the
	// test machine: the first begin goes at once, what follows in batches.
	h := start(t, double, nil, func(o *server.Options) { o.ControlBatchWait = 300 * time.Millisecond })
	var streams []*clientStream
	for range 6 {
		streams = append(streams, h.open(""))
	}
	for _, c := range streams {
		c.send(pcm(500))
		_ = c.call.CloseSend()
	}
	for _, c := range streams {
		if _, err := c.wait(); err != nil {
			t.Fatalf("stream ended with %v", err)
		}
	}
	batches := double.Batches()
	events := 0
	for _, n := range batches {
		events += n
	}
	// Per stream: begin, open and finished; sent at once, they would be 18 batches.
	if events != 18 || len(batches) > 6 {
		t.Errorf("%d events in batches %v", events, batches)
	}
}

func TestAClientsLargestMessagesEndOnlyItsOwnStream(t *testing.T) {
	// Every stream's events share one Connect call: a client message as large
	// as the public endpoint takes, carried whole, would end that call and every
	// stream on it.
	const limit = 64 << 10
	a := instance(t, "a")
	double := &controldouble.Double{Place: placeOn(a)}
	h := start(t, double, nil, func(o *server.Options) { o.MaxMessageBytes = limit })
	victim := h.open("victim")
	victim.send(pcm(500))
	victim.waitFor("a result", func(rs []*sttv1.StreamingRecognizeResponse) bool { return len(rs) > 0 })

	largest := func(most int, fill func(n int) *sttv1.StreamingRecognizeRequest) *sttv1.StreamingRecognizeRequest {
		n := most
		for proto.Size(fill(n)) > most {
			n--
		}
		return fill(n)
	}
	audio := largest(limit, func(n int) *sttv1.StreamingRecognizeRequest {
		return &sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_AudioContent{
			AudioContent: make([]byte, n)}}
	})
	configOf := func(n int) *sttv1.StreamingRecognizeRequest {
		return &sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_StreamingConfig{
			StreamingConfig: &sttv1.StreamingRecognitionConfig{Config: &sttv1.RecognitionConfig{
				Encoding: sttv1.AudioEncoding_AUDIO_ENCODING_LINEAR16, SampleRateHertz: rate,
				Priority: sttv1.Priority_PRIORITY_REALTIME, LanguageCode: "en" + strings.Repeat(" ", n),
			}}}}
	}
	// The largest config, and one an instance takes once the route named its
	// pool and stream.
	config, served := largest(limit, configOf), largest(limit-100, configOf)
	for _, c := range []struct {
		name     string
		requests []*sttv1.StreamingRecognizeRequest
		code     codes.Code
	}{
		// open carries the first request, a reject the request refused.
		{"audio first", []*sttv1.StreamingRecognizeRequest{audio}, codes.InvalidArgument},
		{"a second config", []*sttv1.StreamingRecognizeRequest{served, audioRequest(pcm(200)), config}, codes.InvalidArgument},
		// The route brings the config back, with the pool and stream id: too
		// large for the instance's call, not for the control plane's.
		{"a config", []*sttv1.StreamingRecognizeRequest{config, audioRequest(pcm(200))}, codes.ResourceExhausted},
	} {
		call, err := h.client.StreamingRecognize(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range c.requests {
			if err := call.Send(r); err != nil {
				break
			}
		}
		_ = call.CloseSend()
		for err == nil {
			_, err = call.Recv()
		}
		if status.Code(err) != c.code {
			t.Errorf("%s: the client's stream ended with %v, want %v", c.name, err, c.code)
		}
	}
	if r := nextStream(t, double).Events()[0].GetOpen().GetFirstRequest(); r.GetStreamingConfig().GetStreamId() != "victim" {
		t.Fatalf("the first stream is not the victim: %v", r)
	}
	for _, c := range []struct {
		name string
		want *sttv1.StreamingRecognizeRequest
		got  func(events []*routerv1.AttachRequest) *sttv1.StreamingRecognizeRequest
	}{
		// What the control plane needs of each: which field was set.
		{"audio first", &sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_AudioContent{}},
			func(events []*routerv1.AttachRequest) *sttv1.StreamingRecognizeRequest {
				return events[0].GetOpen().GetFirstRequest()
			}},
		{"a second config", &sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_StreamingConfig{
			StreamingConfig: &sttv1.StreamingRecognitionConfig{}}},
			func(events []*routerv1.AttachRequest) *sttv1.StreamingRecognizeRequest {
				return events[len(events)-1].GetReject().GetBadRequest()
			}},
		{"a config", config, func(events []*routerv1.AttachRequest) *sttv1.StreamingRecognizeRequest {
			return events[0].GetOpen().GetFirstRequest()
		}},
	} {
		s := nextStream(t, double)
		ended(t, s)
		if events := s.Events(); len(events) == 0 {
			t.Errorf("%s: the control plane got no event", c.name)
		} else if got := c.got(events); !proto.Equal(got, c.want) {
			t.Errorf("%s: the control plane got a request of %d bytes, not %d", c.name, proto.Size(got), proto.Size(c.want))
		}
	}

	victim.send(pcm(1000))
	if _, err := victim.finish(); err != nil {
		t.Fatalf("the other stream ended with %v", err)
	}
	if n := double.Connects(); n != 1 {
		t.Errorf("%d Connect calls", n)
	}
}

func audioRequest(audio []byte) *sttv1.StreamingRecognizeRequest {
	return &sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_AudioContent{AudioContent: audio}}
}

func TestAShutdownWithoutADrainEndsTheStreamsLeftAtOnce(t *testing.T) {
	// The router drains before it stops its data path: what is left then ends
	// at once, each client with a status that says why.
	a := instance(t, "a")
	double := &controldouble.Double{Place: placeOn(a)}
	h := start(t, double, nil, nil)
	finished := h.open("")
	finished.send(pcm(500))
	if _, err := finished.finish(); err != nil {
		t.Fatalf("the stream that finished ended with %v", err)
	}
	left := h.open("")
	left.send(pcm(500))
	left.waitFor("a result", func(rs []*sttv1.StreamingRecognizeResponse) bool { return len(rs) > 0 })

	began := time.Now()
	if h.dp.Shutdown(0) {
		t.Error("Shutdown says no call was cancelled")
	}
	if took := time.Since(began); took > 500*time.Millisecond {
		t.Errorf("Shutdown took %v", took)
	}
	_, err := left.wait()
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "the router stopped; retry on another router" {
		t.Errorf("the stream left ended with %v", err)
	}
	eventually(t, "a's stream cancelled", func() bool { return a.Stats().Cancelled == 1 }, a.Changed)
}

func TestAClientThatStopsReadingLosesItsStream(t *testing.T) {
	// It keeps its call open and keeps sending, but reads nothing: SendMsg
	// waited on flow control, the relay stopped reading the instance, and
	// nothing ended the stream: it held the instance's call and its placement
	// for as long as the client kept its connection. Now a response left
	// untaken for the idle timeout ends it; the client, once it reads again,
	// gets what it missed, then why. Other streams go on meanwhile.
	a, err := fakeinstance.Start(fakeinstance.Options{
		ID: "a", Pool: "asr_small", Model: "tiny.en", UtteranceMs: utteranceMs, InterimPadding: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Kill)
	double := &controldouble.Double{
		Route: func(first *sttv1.StreamingRecognizeRequest) (*routerv1.RouteEvent, error) {
			limits := controldouble.DefaultLimits()
			limits.IdleTimeoutMs = 500
			return controldouble.DefaultRoute(first, "asr_small", limits)
		},
		Place: placeOn(a),
	}
	h := start(t, double, nil, nil)
	// A window that does not grow (no BDP estimation), as a client's whose reads stopped.
	conn, err := grpc.Dial(fmt.Sprintf("127.0.0.1:%d", h.dp.Port()), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call, err := sttv1.NewRecognizerServiceClient(conn).StreamingRecognize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := call.Send(configRequest("stalled")); err != nil {
		t.Fatal(err)
	}
	sending := make(chan struct{})
	go func() { // paced, and on until flow control stops it
		defer close(sending)
		for call.Send(audioRequest(make([]byte, chunkBytes))) == nil && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
	}()
	defer func() {
		cancel()
		<-sending
	}()
	eventually(t, "a's stream", func() bool { return a.Stats().Active == 1 }, a.Changed)

	other := h.open("other")
	audio := pcm(1500)
	other.send(audio)
	rs, err := other.finish()
	if texts, _ := finals(rs); err != nil || !reflect.DeepEqual(texts, fakeinstance.ExpectedFinals(audio, rate, utteranceMs)) {
		t.Errorf("the other stream ended with %v, finals %q", err, texts)
	}
	eventually(t, "a's call cancelled", func() bool {
		st := a.Stats()
		return st.Active == 0 && st.Cancelled == 1
	}, a.Changed)
	s := nextStream(t, double)
	ended(t, s)
	if _, finished := outcomes(s); finished.GetCode() != int32(codes.OutOfRange) {
		t.Errorf("finished %v, not OUT_OF_RANGE", finished)
	}
	eventually(t, "the stream's goroutines to end", func() bool {
		buf := make([]byte, 1<<20)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "relay.(*stream)")
	}, func() <-chan struct{} {
		tick := make(chan struct{})
		time.AfterFunc(10*time.Millisecond, func() { close(tick) })
		return tick
	})

	read := 0
	for {
		if _, err = call.Recv(); err != nil {
			break
		}
		read++
	}
	want := "no result was read for 0.5 s: read the results as they come"
	if st := status.Convert(err); st.Code() != codes.OutOfRange || st.Message() != want || read == 0 {
		t.Errorf("after %d responses the stream ended with %v", read, err)
	}
}
