// Package controldouble is a test double of the router's control plane, not the
// control plane: DataPlaneService.Connect, serving the Attach calls it carries
// (protos/voxmesh/router/v1/dataplane.proto; the data path makes no other call),
// answering open and place as its Route and Place functions say (the answer to
// open.place goes with the route when Place returns within 200 ms), ending the
// call for a reject as its Reject function says and at its start as its Begin
// function says, with no discovery, admission
// queue or limits. It records every stream's events for tests to check. The
// data path's tests and its benchmark (cmd/benchcontrol) use it.
package controldouble

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// Double is the control plane double. Set its functions before serving it.
type Double struct {
	routerv1.UnimplementedDataPlaneServiceServer

	// Route answers open; nil routes as DefaultRoute("asr_small", DefaultLimits()).
	Route func(first *sttv1.StreamingRecognizeRequest) (*routerv1.RouteEvent, error)
	// Place answers a stream's n-th place (from 0); an error ends the call with
	// it. Required.
	Place func(s *Stream, n int) (*routerv1.PlacementEvent, error)
	// Reject returns the status a reject ends the call with; nil ends it with
	// INVALID_ARGUMENT.
	Reject func(s *Stream, r *routerv1.RejectEvent) error
	// Begin, when not nil, is called as a call starts, before any event; an
	// error ends the call with it at once (as the router refuses a stream while
	// it drains or serves its maximum).
	Begin func(s *Stream) error

	streams  chan *Stream
	once     sync.Once
	connects atomic.Int32
	batchMu  sync.Mutex
	batches  []int
}

// Connects returns how many Connect calls the double has taken.
func (d *Double) Connects() int { return int(d.connects.Load()) }

// Batches returns the number of events in each Connect request so far.
func (d *Double) Batches() []int {
	d.batchMu.Lock()
	defer d.batchMu.Unlock()
	return append([]int(nil), d.batches...)
}

// attachServer is the server side of one stream's Attach call, as Connect
// carries it (connect.go).
type attachServer interface {
	Recv() (*routerv1.AttachRequest, error)
	Send(*routerv1.AttachResponse) error
	Context() context.Context
	SetTrailer(metadata.MD)
}

// Stream is one Attach call the double served.
type Stream struct {
	call attachServer

	mu        sync.Mutex
	events    []*routerv1.AttachRequest
	answers   []*routerv1.AttachResponse
	changed   chan struct{}
	ended     chan struct{}
	err       error
	cancelled bool
}

// Streams returns the calls as they arrive (the 1024 latest not yet taken).
func (d *Double) Streams() <-chan *Stream {
	d.init()
	return d.streams
}

func (d *Double) init() {
	d.once.Do(func() { d.streams = make(chan *Stream, 1024) })
}

// Serve serves the double on a Unix socket at path until the returned stop is
// called.
func (d *Double) Serve(path string) (stop func(), err error) {
	d.init()
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20))
	routerv1.RegisterDataPlaneServiceServer(srv, d)
	go func() { _ = srv.Serve(lis) }()
	return srv.Stop, nil
}

// serve serves one stream's call, and records how it ended.
func (d *Double) serve(call attachServer) error {
	s := &Stream{call: call, changed: make(chan struct{}), ended: make(chan struct{})}
	select {
	case d.streams <- s:
	default:
	}
	err := d.attach(s)
	s.mu.Lock()
	s.err = err
	s.cancelled = call.Context().Err() != nil
	close(s.ended)
	s.mu.Unlock()
	return err
}

func (d *Double) attach(s *Stream) error {
	// Events are received (and recorded) as they come, also while an answer is
	// being made, as the control plane takes buffered events while a stream waits.
	incoming := make(chan *routerv1.AttachRequest, 1024)
	var recvErr error
	go func() {
		defer close(incoming)
		for {
			ev, err := s.call.Recv()
			if err != nil {
				recvErr = err
				return
			}
			s.record(ev)
			incoming <- ev
		}
	}()
	next := func() (*routerv1.AttachRequest, error) {
		if ev, ok := <-incoming; ok {
			return ev, nil
		}
		return nil, recvErr
	}
	if d.Begin != nil {
		if err := d.Begin(s); err != nil {
			return err
		}
	}
	open, err := next()
	if err != nil {
		return err
	}
	if r := open.GetReject(); r != nil { // the client sent nothing
		return d.reject(s, r)
	}
	if open.GetOpen() == nil {
		return status.Error(codes.FailedPrecondition, "double: the first message was neither open nor reject")
	}
	route := d.Route
	if route == nil {
		route = func(first *sttv1.StreamingRecognizeRequest) (*routerv1.RouteEvent, error) {
			return DefaultRoute(first, "asr_small", DefaultLimits())
		}
	}
	r, err := route(open.GetOpen().GetFirstRequest())
	if err != nil {
		return err
	}
	places := 0
	var placed chan placeResult // the answer to open.place, when it must follow the route
	if open.GetOpen().GetPlace() {
		placed = make(chan placeResult, 1)
		go func() {
			p, err := d.Place(s, 0)
			placed <- placeResult{p, err}
		}()
		places++
		// As the control plane, which lets the placing run one turn of its loop:
		// a placement made at once goes with the route.
		select {
		case res := <-placed:
			if res.err != nil {
				return res.err
			}
			r = proto.Clone(r).(*routerv1.RouteEvent)
			r.Placement, placed = res.placement, nil
		case <-time.After(placeAtOnce):
		}
	}
	if err := s.answer(&routerv1.AttachResponse{Event: &routerv1.AttachResponse_Route{Route: r}}); err != nil {
		return err
	}
	if placed != nil {
		res := <-placed
		if res.err != nil {
			return res.err
		}
		if err := s.answer(&routerv1.AttachResponse{Event: &routerv1.AttachResponse_Placement{Placement: res.placement}}); err != nil {
			return err
		}
	}
	for {
		ev, err := next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch e := ev.Event.(type) {
		case *routerv1.AttachRequest_Place:
			p, err := d.Place(s, places)
			places++
			if err != nil {
				return err
			}
			if err := s.answer(&routerv1.AttachResponse{Event: &routerv1.AttachResponse_Placement{Placement: p}}); err != nil {
				return err
			}
		case *routerv1.AttachRequest_Reject:
			return d.reject(s, e.Reject)
		case *routerv1.AttachRequest_Finished:
			return nil // as the control plane: finished ends the call OK
		}
	}
}

// placeAtOnce is how long the double waits for the answer to open.place before
// it sends the route without it: a Place that returns at once always makes it,
// however busy the test machine; one that blocks (a queue) only delays the
// route by this much.
const placeAtOnce = 200 * time.Millisecond

// placeResult is what Place returned.
type placeResult struct {
	placement *routerv1.PlacementEvent
	err       error
}

// reject ends a call for r.
func (d *Double) reject(s *Stream, r *routerv1.RejectEvent) error {
	if d.Reject == nil {
		return status.Error(codes.InvalidArgument, "double: rejected")
	}
	return d.Reject(s, r)
}

// record records an event.
func (s *Stream) record(ev *routerv1.AttachRequest) {
	s.mu.Lock()
	s.events = append(s.events, ev)
	s.changedLocked()
	s.mu.Unlock()
}

// changedLocked wakes those waiting on Changed; called with s.mu held.
func (s *Stream) changedLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// answer records an answer and sends it.
func (s *Stream) answer(a *routerv1.AttachResponse) error {
	s.mu.Lock()
	s.answers = append(s.answers, a)
	s.changedLocked()
	s.mu.Unlock()
	return s.call.Send(a)
}

// Answers returns the answers sent so far.
func (s *Stream) Answers() []*routerv1.AttachResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*routerv1.AttachResponse(nil), s.answers...)
}

// Events returns the events received so far.
func (s *Stream) Events() []*routerv1.AttachRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*routerv1.AttachRequest(nil), s.events...)
}

// Changed returns a channel closed at the next event or answer.
func (s *Stream) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Context is the call's context: done once the data path ended or cancelled it.
func (s *Stream) Context() context.Context { return s.call.Context() }

// SetTrailer sets the trailer the call ends with.
func (s *Stream) SetTrailer(md metadata.MD) { s.call.SetTrailer(md) }

// Ended returns a channel closed once the call ended.
func (s *Stream) Ended() <-chan struct{} { return s.ended }

// Err returns what the call ended with (nil: OK); valid once Ended.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Cancelled reports whether the data path cancelled the call; valid once Ended.
func (s *Stream) Cancelled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cancelled
}

// DefaultLimits are the router's default settings (services/router/settings.py).
func DefaultLimits() *routerv1.RelayLimits {
	return &routerv1.RelayLimits{
		QueueMaxBytes:     1 << 20,
		RelayBufferBytes:  64 << 10,
		ReplayMaxBytes:    16 << 20,
		MaxChunkBytes:     1 << 20,
		FailoverContextMs: 15000,
		IdleTimeoutMs:     30000,
	}
}

// DefaultRoute routes every stream to pool as the router would after checking
// the first request no further than that it is a config: the config with pool
// as its model and a stream id, LINEAR16 or not as it says.
func DefaultRoute(first *sttv1.StreamingRecognizeRequest, pool string, limits *routerv1.RelayLimits) (*routerv1.RouteEvent, error) {
	if first == nil {
		return nil, status.Error(codes.InvalidArgument, "empty stream: the first request must carry streaming_config")
	}
	sc := first.GetStreamingConfig()
	if sc == nil {
		return nil, status.Error(codes.InvalidArgument, "audio before config: the first request must carry streaming_config")
	}
	config := proto.Clone(first).(*sttv1.StreamingRecognizeRequest)
	cfg := config.GetStreamingConfig()
	if cfg.Config == nil {
		cfg.Config = &sttv1.RecognitionConfig{}
	}
	cfg.Config.Model = pool
	if cfg.StreamId == "" {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		cfg.StreamId = hex.EncodeToString(b)
	}
	linear16 := cfg.Config.GetEncoding() == sttv1.AudioEncoding_AUDIO_ENCODING_LINEAR16
	rate := int32(0)
	if linear16 {
		rate = cfg.Config.GetSampleRateHertz()
	}
	return &routerv1.RouteEvent{
		Config: config, Pool: pool, StreamId: cfg.StreamId, Linear16: linear16,
		SampleRateHertz: rate, Limits: limits,
	}, nil
}
