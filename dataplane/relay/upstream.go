package relay

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/voxmesh/voxmesh/dataplane/failover"
	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// streamDesc opens StreamingRecognize on an instance.
var streamDesc = grpc.StreamDesc{StreamName: "StreamingRecognize", ServerStreams: true, ClientStreams: true}

// attemptEnd is how an attempt's instance call ended.
type attemptEnd struct {
	outcome routerv1.AttemptEndedEvent_Outcome
	err     error       // the call's status (nil for DONE by EOF)
	trailer metadata.MD // the call's trailer
}

// attempt relays the stream to the placement's instance until its call ends.
// The ending is set instead when the attempt was cut short by the client or the
// control plane; no outcome is reported for it.
func (s *stream) attempt(p *routerv1.PlacementEvent) (attemptEnd, *ending) {
	lease, err := s.r.cfg.Instances.Get(p.GetTarget())
	if err != nil { // a target gRPC cannot parse: an instance the stream cannot reach
		return attemptEnd{outcome: classify(err, false, s.summarySent), err: err}, nil
	}
	defer lease.Release()

	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	md := metadata.MD{}
	s.mu.Lock()
	for _, kv := range s.log.ResumeMetadata() {
		md.Append(kv.Key, kv.Value)
	}
	s.attached, s.cancelAttempt = true, cancel
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.attached, s.cancelAttempt = false, nil
		s.mu.Unlock()
		signal(s.space) // the queue's bound again
	}()
	signal(s.space) // the bound is the relay's now
	for _, kv := range p.GetMetadata() {
		md.Append(kv.GetKey(), kv.GetValue())
	}
	// What ended the stream before cancelAttempt was set would not cancel it.
	if e := s.interruption(); e != nil {
		return attemptEnd{}, e
	}

	up, err := lease.Conn.NewStream(metadata.NewOutgoingContext(ctx, md), &streamDesc, Method)
	if err != nil {
		if e := s.interruption(); e != nil {
			return attemptEnd{}, e
		}
		return attemptEnd{outcome: classify(err, false, s.summarySent), err: err}, nil
	}
	written := make(chan struct{})
	go s.writeUpstream(ctx, up, written)
	defer func() {
		cancel()
		<-written
	}()

	answered := false
	var raw []byte
	for {
		err := up.RecvMsg(&raw)
		if errors.Is(err, io.EOF) {
			return attemptEnd{outcome: outcomeDone}, nil
		}
		if err != nil {
			// A client that left, or a client or control plane that ended the
			// stream, cancelled the call: that is no failure of the instance's.
			if e := s.interruption(); e != nil {
				return attemptEnd{}, e
			}
			trailer := up.Trailer()
			return attemptEnd{classify(err, answered, s.summarySent), err, trailer}, nil
		}
		answered = true
		e, malformed := s.onResponse(raw)
		if e != nil {
			return attemptEnd{}, e
		}
		if malformed != nil { // what the instance sent is no StreamingRecognizeResponse
			return attemptEnd{outcome: outcomeError, err: malformed}, nil
		}
	}
}

// interruption returns how the stream ends when something other than its
// instance ended the attempt: nil when nothing did.
func (s *stream) interruption() *ending {
	select {
	case <-s.ctx.Done():
		return gone
	case <-s.attachEnd:
		return relayed
	case <-s.clientFailed:
		return s.clientEnding()
	default:
		return nil
	}
}

// writeUpstream sends the route's config, then the log's audio as it comes, and
// half-closes once the client did and the instance has everything. It ends at
// the first failure (the reading side reports the instance's status) or when ctx
// ends; written closes then.
func (s *stream) writeUpstream(ctx context.Context, up grpc.ClientStream, written chan<- struct{}) {
	defer close(written)
	msg := s.config
	if up.SendMsg(&msg) != nil {
		return
	}
	for {
		s.mu.Lock()
		audio, raw, ok := s.log.NextRequest()
		if !ok {
			halfClosed := s.log.HalfClosed
			s.mu.Unlock()
			if halfClosed {
				_ = up.CloseSend()
				return
			}
			select {
			case <-s.dataForWriter:
				continue
			case <-ctx.Done():
				return
			}
		}
		msg = requestOf(audio, raw)
		arrived, sampled := s.lat.sent(s.log.TotalBytes() - s.log.UnsentBytes())
		readerWaits := s.readerWaits
		s.readerWaits = false
		s.mu.Unlock()
		if up.SendMsg(&msg) != nil {
			return
		}
		if sampled {
			took := time.Since(arrived).Seconds()
			s.mu.Lock()
			s.lat.up = append(s.lat.up, took)
			s.mu.Unlock()
		}
		if readerWaits {
			signal(s.space)
		}
	}
}

// onResponse passes an instance's response through the ResultTracker, commits
// finals to the log, fixes the summary, and writes what is left of it to the
// client. It returns the ending of a client that is gone or took nothing for
// the idle timeout, or malformed when raw is not a StreamingRecognizeResponse.
func (s *stream) onResponse(raw []byte) (e *ending, malformed error) {
	s.responses++
	sampled := s.responses%latencySampleEvery == 0
	var arrived time.Time
	if sampled {
		arrived = time.Now()
	}
	out, kind, err := s.track(raw)
	if err != nil {
		return nil, err
	}
	if out == nil {
		return nil, nil
	}
	if e := s.writeClient(out); e != nil {
		return e, nil
	}
	if kind == kindSummary {
		s.summarySent = true
	}
	if sampled {
		s.lat.down = append(s.lat.down, time.Since(arrived).Seconds())
		s.flushLatency(false)
	}
	return nil, nil
}

// track returns what the client gets of raw (raw itself when nothing changes;
// nil to drop it) and what it is.
func (s *stream) track(raw []byte) ([]byte, responseKind, error) {
	v, ok := viewResponse(raw)
	if !ok || v.kind == kindSummary {
		return s.trackDecoded(raw)
	}
	switch v.kind {
	case kindResult:
		index, send := s.tracker.OnResult(v.index, v.final, v.endMs)
		if !send {
			return nil, v.kind, nil
		}
		if v.final {
			s.commit(v.endMs, v.startMs, string(v.text))
		}
		if index != v.index {
			return withIndex(&v, index), v.kind, nil
		}
	case kindEvent:
		if !s.tracker.OnSpeechEvent(v.started, v.offsetMs) {
			return nil, v.kind, nil
		}
	}
	return raw, v.kind, nil
}

// trackDecoded is track for a response decoded in full: the summary, and
// responses encoded otherwise than viewResponse reads.
func (s *stream) trackDecoded(raw []byte) ([]byte, responseKind, error) {
	var resp sttv1.StreamingRecognizeResponse
	if err := proto.Unmarshal(raw, &resp); err != nil {
		return nil, kindNone, unmarshalError(err)
	}
	switch r := resp.StreamingResponse.(type) {
	case *sttv1.StreamingRecognizeResponse_Result:
		res := r.Result
		end := res.GetEndOffset()
		index, send := s.tracker.OnResult(res.GetUtteranceIndex(), res.GetIsFinal(),
			failover.DurationMs(end.GetSeconds(), end.GetNanos()))
		if !send {
			return nil, kindResult, nil
		}
		if res.GetIsFinal() {
			start := res.GetStartOffset()
			text := ""
			if len(res.GetAlternatives()) > 0 {
				text = res.GetAlternatives()[0].GetTranscript()
			}
			s.commit(failover.DurationMs(end.GetSeconds(), end.GetNanos()),
				failover.DurationMs(start.GetSeconds(), start.GetNanos()), text)
		}
		if index == res.GetUtteranceIndex() {
			return raw, kindResult, nil
		}
		res.UtteranceIndex = index
	case *sttv1.StreamingRecognizeResponse_SpeechEvent:
		ev := r.SpeechEvent
		offset := ev.GetOffset()
		started := ev.GetType() == sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_STARTED
		if !s.tracker.OnSpeechEvent(started, failover.DurationMs(offset.GetSeconds(), offset.GetNanos())) {
			return nil, kindEvent, nil
		}
		return raw, kindEvent, nil
	case *sttv1.StreamingRecognizeResponse_Summary:
		s.fixSummary(r.Summary)
	default:
		return raw, kindNone, nil
	}
	kind := kindResult
	if resp.GetSummary() != nil {
		kind = kindSummary
	}
	out, err := proto.Marshal(&resp)
	if err != nil {
		return nil, kind, err
	}
	return out, kind, nil
}

// commit records a final result in the log: the resume point moves past it.
func (s *stream) commit(endMs, startMs float64, text string) {
	s.mu.Lock()
	s.log.Commit(endMs, startMs, text)
	s.mu.Unlock()
}

// fixSummary rewrites the stream-level figures of the last instance's summary:
// finals the client got, failovers, the stream id and, for LINEAR16, the audio
// received (failover.ResultTracker's fix_summary in Python).
func (s *stream) fixSummary(summary *sttv1.StreamSummary) {
	summary.FinalResults = int32(s.tracker.FinalResults())
	summary.Failovers = int32(s.tracker.Failovers())
	summary.StreamId = s.route.GetStreamId()
	s.mu.Lock()
	seconds := s.log.AudioSeconds()
	s.mu.Unlock()
	if nanos, ok := failover.SummaryAudioNanos(seconds); ok {
		summary.AudioProcessed = durationpb.New(time.Duration(nanos))
	}
}
