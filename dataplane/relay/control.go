package relay

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
)

// attachCall begins the stream's Attach call, carried by the Connect call
// (connect.go), as the stream begins, so that the control plane refuses it at
// once while the router drains or is full, and counts it whatever its end. The
// call lives under the client's context: a client that leaves cancels it,
// which releases what the stream held on the control side.
func (s *stream) attachCall() *ending {
	ctx, cancel := context.WithCancel(s.ctx)
	call, err := s.r.control.attach(ctx)
	if err != nil {
		cancel()
		if s.ctx.Err() != nil {
			return gone
		}
		// No control plane to answer (its connection is lost): the stream fails
		// with the call's own status, UNAVAILABLE.
		return &ending{err: err}
	}
	s.attach, s.cancelAttach = call, cancel
	go s.readAttach()
	return nil
}

// readAttach hands the control plane's answers to the handler until the call
// ends, then records its status and trailer and interrupts the current attempt.
func (s *stream) readAttach() {
	for {
		answer, err := s.attach.Recv()
		if err == nil {
			select {
			case s.answers <- answer:
				continue
			case <-s.done:
				return
			}
		}
		if errors.Is(err, io.EOF) {
			// The control plane ends a call with OK only after finished, when the
			// relay no longer reads this; ending it so earlier breaks the contract.
			err = status.Error(codes.Internal, "the router's control plane ended the stream without a status")
		}
		s.attachErr, s.attachTrailer = err, s.attach.Trailer()
		close(s.attachEnd)
		s.mu.Lock()
		if s.cancelAttempt != nil {
			s.cancelAttempt()
		}
		s.mu.Unlock()
		return
	}
}

// send sends ev on the Attach call with the seconds of audio received so far.
// A failure is not reported here: the call has ended, and readAttach reports
// its status. Called without s.mu held.
func (s *stream) send(ev *routerv1.AttachRequest) {
	s.mu.Lock()
	if s.log != nil {
		ev.AudioSeconds = s.log.AudioSeconds()
	}
	s.mu.Unlock()
	_ = s.attach.Send(ev)
}

// awaitAnswer waits for the control plane's next answer. onWake, when not nil,
// is called meanwhile at each news from the client reader and when tick fires
// (a nil tick never does).
func (s *stream) awaitAnswer(onWake func(), tick <-chan time.Time) (*routerv1.AttachResponse, *ending) {
	for {
		select {
		case answer := <-s.answers:
			return answer, nil
		case <-s.attachEnd:
			return nil, relayed
		case <-s.clientFailed:
			return nil, s.clientEnding()
		case <-s.ctx.Done():
			return nil, gone
		case <-s.dataForHandler:
			if onWake != nil {
				onWake()
			}
		case <-tick:
			if onWake != nil {
				onWake()
			}
		}
	}
}

// clientEnding ends the stream for its reader's failure: the control plane
// words a bad request or a stream without audio (reject); a broken client call
// ends with gRPC's status for it.
func (s *stream) clientEnding() *ending {
	f := s.failure
	switch {
	case f.bad != nil:
		return s.reject(&routerv1.RejectEvent{Reason: &routerv1.RejectEvent_BadRequest{BadRequest: badForControl(f.bad)}})
	case f.badChunk > 0:
		return s.reject(&routerv1.RejectEvent{Reason: &routerv1.RejectEvent_BadChunkBytes{BadChunkBytes: f.badChunk}})
	case f.noAudio:
		return s.reject(&routerv1.RejectEvent{Reason: &routerv1.RejectEvent_NoAudio{NoAudio: true}})
	}
	return s.recvFailed(f.err)
}

// recvFailed ends a stream whose client call failed under the reader with err:
// a client that left is gone; any other failure (a message gRPC refused, such as
// one over the size limit) ends the stream with gRPC's status for it.
func (s *stream) recvFailed(err error) *ending {
	code := status.Code(err)
	if s.ctx.Err() != nil || code == codes.Canceled || code == codes.DeadlineExceeded {
		return gone
	}
	return s.finish(err, nil, outcomeNone)
}

// flushLatency sends the samples taken since the last latency event, once
// latencyFlushEvery has passed since (or at once with force).
func (s *stream) flushLatency(force bool) {
	if !force && time.Since(s.lat.lastSent) < latencyFlushEvery {
		return
	}
	if ev := s.takeLatency(); ev != nil {
		s.send(&routerv1.AttachRequest{Event: &routerv1.AttachRequest_Latency{Latency: ev}})
	}
}

// takeLatency returns the samples taken since the last latency event, nil when
// there are none.
func (s *stream) takeLatency() *routerv1.LatencyEvent {
	s.mu.Lock()
	up := s.lat.up
	s.lat.up = nil
	s.mu.Unlock()
	down := s.lat.down
	s.lat.down = nil
	s.lat.lastSent = time.Now()
	if len(up) == 0 && len(down) == 0 {
		return nil
	}
	return &routerv1.LatencyEvent{UpstreamSeconds: up, DownstreamSeconds: down}
}
