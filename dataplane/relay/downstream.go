package relay

import (
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The client writer. SendMsg returns once gRPC has the response, which HTTP/2
// flow control holds back while the client reads nothing: a client that keeps
// its call open but stops reading (a stalled or wedged reader) would hold the
// handler there, and with it the instance's call and the placement, for as long
// as it kept its connection. So the handler hands each response to a goroutine
// of the stream's own, started with the first response, and waits for its
// SendMsg up to the idle timeout. A response the client has not taken by then
// ends the stream as an instance ends one: the control plane hears finished
// with OUT_OF_RANGE and the handler returns that status, which gRPC sends after
// the responses it was handed already (the client reads them first); returning
// ends the call's context, which ends the SendMsg still waiting, and the writer
// goroutine returns.

// unreadError is the status of a client that took no response for limit, worded
// as an instance and the Python relay word it.
func unreadError(limit time.Duration) error {
	return status.Errorf(codes.OutOfRange, "no result was read for %s s: read the results as they come",
		strconv.FormatFloat(limit.Seconds(), 'g', -1, 64))
}

// writeClient writes out, an encoded response, to the client: nil once gRPC has
// it, else the stream's ending (a client that is gone, a message gRPC refused,
// a client that has not taken it for the idle timeout).
func (s *stream) writeClient(out []byte) *ending {
	if s.toClient == nil {
		s.toClient, s.sentToClient = make(chan *[]byte), make(chan error, 1)
		s.unread = time.NewTimer(s.idleWait)
		go s.clientWriter()
	} else {
		s.unread.Reset(s.idleWait) // stopped and drained by the last write
	}
	s.out = out          // a field: handing over &out would allocate out for every response
	s.toClient <- &s.out // the writer waits for it: the last write has ended
	select {
	case err := <-s.sentToClient:
		if !s.unread.Stop() {
			select { // a tick that came as SendMsg returned (go.mod's go 1.22 timers)
			case <-s.unread.C:
			default: // none waits: newer timer semantics never deliver it
			}
		}
		if err == nil {
			return nil
		}
		if s.ctx.Err() != nil {
			return gone
		}
		return s.finish(err, nil, outcomeNone) // gRPC refused the message
	case <-s.unread.C:
		s.r.log.Warn("the client took no result for the idle timeout (it stopped reading); ending its stream",
			"stream", s.route.GetStreamId(), "idle_timeout_s", s.idleWait.Seconds())
		return s.finish(unreadError(s.idleWait), nil, outcomeNone)
	case <-s.ctx.Done():
		return gone
	}
}

// clientWriter sends the client what writeClient hands it, one response at a
// time, until the stream's handler returned.
func (s *stream) clientWriter() {
	for {
		select {
		case out := <-s.toClient:
			s.sentToClient <- s.down.SendMsg(out)
		case <-s.done:
			return
		}
	}
}
