package relay

import (
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// How a stream ended, which says what its client gets.
type endHow int

const (
	// endStatus: the client gets ending.err (nil: OK) and ending.trailer.
	endStatus endHow = iota
	// endRelayed: the control plane ended the Attach call; the client gets its
	// status and trailer.
	endRelayed
	// endGone: the client cancelled or its deadline passed.
	endGone
)

// ending is how a stream ended.
type ending struct {
	how     endHow
	err     error
	trailer metadata.MD
}

var (
	relayed = &ending{how: endRelayed}
	gone    = &ending{how: endGone}
)

// unmarshalError is the status gRPC gives a message it cannot decode.
func unmarshalError(err error) error {
	return status.Errorf(codes.Internal, "grpc: failed to unmarshal the received message: %v", err)
}

// broken ends a stream whose control plane broke the contract: the client gets
// INTERNAL, and the Attach call is cancelled so that the control plane releases
// what the stream held.
func (s *stream) broken(what string) *ending {
	s.r.log.Error("the control plane broke the Attach contract", "problem", what)
	s.cancelAttach()
	return &ending{err: status.Error(codes.Internal, "the router's control plane "+what)}
}

// finishAfterFailure ends a stream whose audio all has its final results after
// its instance failed before the summary: the relay sends the summary, naming
// that instance.
func (s *stream) finishAfterFailure(p *routerv1.PlacementEvent) *ending {
	summary, err := proto.Marshal(&sttv1.StreamingRecognizeResponse{
		StreamingResponse: &sttv1.StreamingRecognizeResponse_Summary{Summary: &sttv1.StreamSummary{
			InstanceId: p.GetInstanceId(), Model: p.GetModel(), Pool: s.route.GetPool(),
		}}})
	if err != nil {
		return &ending{err: status.Error(codes.Internal, err.Error())}
	}
	if e, _ := s.onResponse(summary); e != nil {
		return e
	}
	return s.finish(nil, nil, outcomeNone)
}

// finish ends a stream the relay saw to its end: the control plane hears how
// (finished, with the outcome of the attempt held, last, and the latencies not
// yet sent) and ends the call; the client gets err (nil: OK) and trailer.
func (s *stream) finish(err error, trailer metadata.MD, last routerv1.AttemptEndedEvent_Outcome) *ending {
	s.send(&routerv1.AttachRequest{Event: &routerv1.AttachRequest_Finished{Finished: &routerv1.FinishedEvent{
		Code: int32(status.Code(err)), LastAttempt: last, Latency: s.takeLatency()}}})
	timer := time.NewTimer(s.r.cfg.ControlTimeout)
	defer timer.Stop()
	select {
	case <-s.attachEnd:
	case <-timer.C:
		s.r.log.Warn("the control plane did not end a finished stream's call in time",
			"stream", s.route.GetStreamId())
	case <-s.ctx.Done():
	}
	return &ending{err: err, trailer: trailer}
}

// reject tells the control plane why the stream cannot go on and waits for the
// status it ends the call with, the client's.
func (s *stream) reject(reason *routerv1.RejectEvent) *ending {
	s.flushLatency(true)
	s.send(&routerv1.AttachRequest{Event: &routerv1.AttachRequest_Reject{Reject: reason}})
	timer := time.NewTimer(s.r.cfg.ControlTimeout)
	defer timer.Stop()
	select {
	case <-s.attachEnd:
		return relayed
	case <-s.ctx.Done():
		return gone
	case <-timer.C:
		return s.broken("did not end a rejected stream's call in time")
	}
}
