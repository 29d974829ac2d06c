package relay

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
)

// attachCallStream is one stream's Attach call as the relay uses it: a
// carried stream of the Connect call (carried) behaves as a call of its own.
type attachCallStream interface {
	// Send sends one event; an error means the call has ended (Recv says how).
	Send(*routerv1.AttachRequest) error
	// Recv returns the next answer; io.EOF once the call ended OK, the call's
	// status error otherwise.
	Recv() (*routerv1.AttachResponse, error)
	// Trailer returns the call's trailing metadata once Recv returned an error.
	Trailer() metadata.MD
}

// connector carries every stream's Attach call over one Connect call, opened
// when the first stream needs it and again after it breaks. Safe for
// concurrent use.
type connector struct {
	client          routerv1.DataPlaneServiceClient
	batchWait       time.Duration // Config.ControlBatchWait
	maxMessageBytes int           // Config.ControlMaxMessageBytes

	mu      sync.Mutex
	current *session
}

// attach starts one stream's carried call, living under ctx: its cancellation
// cancels the stream on the control plane, as cancelling an Attach call would.
func (c *connector) attach(ctx context.Context) (attachCallStream, error) {
	c.mu.Lock()
	sess := c.current
	if sess == nil || sess.failed() {
		var err error
		if sess, err = openSession(c.client, c.batchWait, c.maxMessageBytes); err != nil {
			c.mu.Unlock()
			return nil, err
		}
		c.current = sess
	}
	c.mu.Unlock()
	return sess.begin(ctx), nil
}

// session is one Connect call and the streams it carries.
type session struct {
	call      routerv1.DataPlaneService_ConnectClient
	cancel    context.CancelFunc
	wake      chan struct{} // one pending wake-up of the writer at most
	batchWait time.Duration
	maxBytes  int // the largest ConnectRequest the call may send (0: no bound)

	mu      sync.Mutex
	next    uint64
	streams map[uint64]*carried
	pending []*routerv1.StreamEvent // to send, in order
	err     error                   // set once the call failed: its status
	broken  chan struct{}           // closed with err
}

// openSession opens a Connect call, whose requests may be up to maxBytes (0:
// any size), and starts its writer and reader.
func openSession(client routerv1.DataPlaneServiceClient, batchWait time.Duration, maxBytes int) (*session, error) {
	ctx, cancel := context.WithCancel(context.Background())
	call, err := client.Connect(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &session{
		call:      call,
		cancel:    cancel,
		wake:      make(chan struct{}, 1),
		batchWait: batchWait,
		maxBytes:  maxBytes,
		streams:   make(map[uint64]*carried),
		broken:    make(chan struct{}),
	}
	go s.write()
	go s.read()
	return s, nil
}

func (s *session) failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil
}

// begin starts a carried stream (its begin event) under ctx.
func (s *session) begin(ctx context.Context) *carried {
	c := &carried{sess: s, ready: make(chan struct{}, 1)}
	s.mu.Lock()
	if s.err != nil {
		c.ended, c.err = true, s.err
		s.mu.Unlock()
		return c
	}
	c.key = s.next
	s.next++
	s.streams[c.key] = c
	s.enqueueLocked(&routerv1.StreamEvent{Stream: c.key, Kind: &routerv1.StreamEvent_Begin{Begin: true}})
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { s.cancelStream(ctx, c) })
	c.mu.Lock()
	if c.ended {
		stop()
	} else {
		c.stopWatch = stop
	}
	c.mu.Unlock()
	return c
}

// enqueueLocked queues ev for the writer's next batch. Called with s.mu held.
func (s *session) enqueueLocked(ev *routerv1.StreamEvent) {
	s.pending = append(s.pending, ev)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// cancelStream ends c for its context's end: the control plane hears cancel
// unless c ended already.
func (s *session) cancelStream(ctx context.Context, c *carried) {
	s.mu.Lock()
	if s.streams[c.key] != c {
		s.mu.Unlock()
		return
	}
	delete(s.streams, c.key)
	if s.err == nil {
		s.enqueueLocked(&routerv1.StreamEvent{Stream: c.key, Kind: &routerv1.StreamEvent_Cancel{Cancel: true}})
	}
	s.mu.Unlock()
	c.end(status.FromContextError(ctx.Err()).Err(), nil)
}

// write sends the queued events in batches: an event after a quiet spell at
// once, then whatever is queued while a batch is sent and for batchWait after.
func (s *session) write() {
	var gather *time.Timer
	if s.batchWait > 0 {
		gather = time.NewTimer(0)
		<-gather.C
		defer gather.Stop()
	}
	for {
		select {
		case <-s.wake:
		case <-s.broken:
			return
		}
		s.mu.Lock()
		batch := s.pending
		s.pending = nil
		s.mu.Unlock()
		for len(batch) > 0 {
			n := batchLen(batch, s.batchBytes())
			if err := s.call.Send(&routerv1.ConnectRequest{Events: batch[:n]}); err != nil {
				return // the call ended: read has its status
			}
			batch = batch[n:]
		}
		if gather != nil {
			gather.Reset(s.batchWait)
			select {
			case <-gather.C:
			case <-s.broken:
				return
			}
		}
	}
}

// tooLarge reports whether ev would make a ConnectRequest of its own over the
// call's limit, and that request's size.
func (s *session) tooLarge(ev *routerv1.StreamEvent) (int, bool) {
	if s.maxBytes <= 0 {
		return 0, false
	}
	n := eventBytes(ev)
	return n, n > s.maxBytes
}

// maxBatchBytes bounds a ConnectRequest: a backlog (a control plane that took
// nothing for a while) goes in several, each far under the message size limit.
const maxBatchBytes = 1 << 20

// batchBytes is the bound of a batch: maxBatchBytes, or the call's limit when
// that is lower.
func (s *session) batchBytes() int {
	if s.maxBytes > 0 {
		return min(maxBatchBytes, s.maxBytes)
	}
	return maxBatchBytes
}

// eventBytes is what ev adds to a ConnectRequest.
func eventBytes(ev *routerv1.StreamEvent) int {
	n := proto.Size(ev)
	return protowire.SizeTag(1) + protowire.SizeVarint(uint64(n)) + n
}

// batchLen is how many of events, from the first, make a ConnectRequest of at
// most maxBytes (at least one, whatever its size).
func batchLen(events []*routerv1.StreamEvent, maxBytes int) int {
	size := 0
	for n, ev := range events {
		size += eventBytes(ev)
		if n > 0 && size > maxBytes {
			return n
		}
	}
	return len(events)
}

// read hands each answer to its stream until the call ends, then ends every
// stream still carried with the call's status.
func (s *session) read() {
	for {
		resp, err := s.call.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = status.Error(codes.Internal, "the router's control plane ended the Connect call")
			}
			s.fail(err)
			return
		}
		for _, a := range resp.GetAnswers() {
			s.mu.Lock()
			c := s.streams[a.GetStream()]
			end := a.GetEnd()
			if c != nil && end != nil {
				delete(s.streams, a.GetStream())
			}
			s.mu.Unlock()
			switch {
			case c == nil: // cancelled meanwhile: nobody waits for it
			case end != nil:
				trailer, err := streamEndStatus(end)
				c.end(err, trailer)
			default:
				c.deliver(a.GetAnswer())
			}
		}
	}
}

// fail ends the session and every stream it carries with err.
func (s *session) fail(err error) {
	s.mu.Lock()
	s.err = err
	carried := s.streams
	s.streams = nil
	close(s.broken)
	s.mu.Unlock()
	s.cancel()
	for _, c := range carried {
		c.end(err, nil)
	}
}

// streamEndStatus is the trailer and status a StreamEnd carries, as a call's Trailer
// and Recv would give them (io.EOF for OK).
func streamEndStatus(end *routerv1.StreamEnd) (metadata.MD, error) {
	var trailer metadata.MD
	if entries := end.GetTrailer(); len(entries) > 0 {
		trailer = metadata.MD{}
		for _, e := range entries {
			trailer.Append(e.GetKey(), string(e.GetValue()))
		}
	}
	if codes.Code(end.GetCode()) == codes.OK {
		return trailer, io.EOF
	}
	return trailer, status.Error(codes.Code(end.GetCode()), end.GetMessage())
}

// carried is one stream's call carried by a session.
type carried struct {
	sess  *session
	key   uint64
	ready chan struct{} // one pending wake-up of Recv at most

	mu        sync.Mutex
	answers   []*routerv1.AttachResponse
	ended     bool
	err       error
	trailer   metadata.MD
	stopWatch func() bool // stops watching the stream's context
}

// Send queues ev for the control plane; after the stream's end it is dropped.
// An event too large for a ConnectRequest of its own (see tooLarge) ends the
// stream instead, with RESOURCE_EXHAUSTED: sent, it would end the Connect call
// and every stream it carries. The control plane hears cancel.
func (c *carried) Send(ev *routerv1.AttachRequest) error {
	s := c.sess
	sev := &routerv1.StreamEvent{Stream: c.key, Kind: &routerv1.StreamEvent_Event{Event: ev}}
	size, tooLarge := s.tooLarge(sev)
	s.mu.Lock()
	if s.streams[c.key] != c {
		s.mu.Unlock()
		return io.EOF
	}
	if !tooLarge {
		s.enqueueLocked(sev)
		s.mu.Unlock()
		return nil
	}
	delete(s.streams, c.key)
	s.enqueueLocked(&routerv1.StreamEvent{Stream: c.key, Kind: &routerv1.StreamEvent_Cancel{Cancel: true}})
	s.mu.Unlock()
	err := status.Errorf(codes.ResourceExhausted,
		"the stream's event for the router's control plane (%d bytes) exceeds its message limit of %d bytes",
		size, s.maxBytes)
	c.end(err, nil)
	return err
}

// Recv returns the next answer, or how the stream ended once all are read.
func (c *carried) Recv() (*routerv1.AttachResponse, error) {
	for {
		c.mu.Lock()
		if len(c.answers) > 0 {
			a := c.answers[0]
			c.answers = c.answers[1:]
			c.mu.Unlock()
			return a, nil
		}
		if c.ended {
			err := c.err
			c.mu.Unlock()
			return nil, err
		}
		c.mu.Unlock()
		<-c.ready
	}
}

// Trailer returns the trailing metadata the stream ended with.
func (c *carried) Trailer() metadata.MD {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.trailer
}

func (c *carried) deliver(a *routerv1.AttachResponse) {
	c.mu.Lock()
	c.answers = append(c.answers, a)
	c.mu.Unlock()
	c.signal()
}

// end records how the stream ended (the first end counts).
func (c *carried) end(err error, trailer metadata.MD) {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.ended, c.err, c.trailer = true, err, trailer
	stop := c.stopWatch
	c.mu.Unlock()
	if stop != nil {
		stop()
	}
	c.signal()
}

func (c *carried) signal() {
	select {
	case c.ready <- struct{}{}:
	default:
	}
}
