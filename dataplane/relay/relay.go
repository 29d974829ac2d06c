package relay

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/voxmesh/voxmesh/dataplane/failover"
	"github.com/voxmesh/voxmesh/dataplane/instances"
	"github.com/voxmesh/voxmesh/dataplane/internal/passthrough"
	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// DefaultControlBatchWait is Config.ControlBatchWait's default: a stream's
// event waits 2 ms at most, and a burst of a thousand events a second goes in
// batches of a few.
const DefaultControlBatchWait = 2 * time.Millisecond

// Method is the one method the relay serves.
const Method = "/voxmesh.stt.v1.RecognizerService/StreamingRecognize"

// Config is what a Relay needs.
type Config struct {
	// Control is the control plane's DataPlaneService: one Connect call carries
	// every stream's Attach call.
	Control routerv1.DataPlaneServiceClient
	// Instances holds the connections to instances; their calls must pass
	// messages through as bytes (internal/rawcodec).
	Instances *instances.Pool
	// IdleTimeout is the longest wait for a client's first request, and for
	// its next one where the route's limits say 0: the router's idle timeout.
	IdleTimeout time.Duration
	// ControlTimeout bounds the wait for the control plane to end a call after
	// finished or reject.
	ControlTimeout time.Duration
	// ControlBatchWait is how long the Connect call's writer gathers events
	// after sending a batch, before it sends the next: an event after a quiet
	// spell goes at once, and in a burst of streams each batch carries many
	// (each costs the control plane a read, and its answers a write). 0 sends
	// whatever is queued at once.
	ControlBatchWait time.Duration
	// ControlMaxMessageBytes is the largest message the Connect call sends (its
	// connection's limit, which the control plane's server takes too): a stream
	// whose event would not fit ends alone with RESOURCE_EXHAUSTED, the call and
	// the other streams it carries go on. 0: no bound.
	ControlMaxMessageBytes int
	// Logger gets a line per failover and per stream the relay gives up on; nil
	// logs nothing.
	Logger *slog.Logger
}

// Relay serves StreamingRecognize calls. Safe for concurrent use.
type Relay struct {
	cfg     Config
	log     *slog.Logger
	control *connector

	stopping context.Context // done once Stop was called
	stop     context.CancelCauseFunc
	active   atomic.Int64 // streams being served
}

// errStopped is the status of the streams Stop ends.
var errStopped = status.Error(codes.Unavailable, "the router stopped; retry on another router")

// New returns a Relay with cfg.
func New(cfg Config) *Relay {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	stopping, stop := context.WithCancelCause(context.Background())
	return &Relay{cfg: cfg, log: logger, control: &connector{
		client: cfg.Control, batchWait: cfg.ControlBatchWait, maxMessageBytes: cfg.ControlMaxMessageBytes,
	}, stopping: stopping, stop: stop}
}

// Stop ends every stream under way, and every stream that begins after, as
// their clients' leaving would end them (instance calls and Attach calls
// cancelled), with UNAVAILABLE for the clients: the end of a shutdown, once the
// router's drain is over. It returns how many streams were under way.
func (r *Relay) Stop() int {
	r.stop(errStopped)
	return int(r.active.Load())
}

// Serve relays down, a StreamingRecognize call whose messages are raw bytes,
// and returns the status for the server to end it with.
func (r *Relay) Serve(down grpc.ServerStream) error {
	r.active.Add(1)
	defer r.active.Add(-1)
	ctx, cancel := context.WithCancelCause(down.Context())
	defer cancel(nil)
	defer context.AfterFunc(r.stopping, func() { cancel(errStopped) })()
	s := newStream(r, down, ctx)
	defer s.close()
	go s.readClient()
	e := s.run()
	stopped := errors.Is(context.Cause(s.ctx), errStopped)
	switch e.how {
	case endRelayed:
		if stopped && status.Code(s.attachErr) == codes.Canceled { // Stop cancelled the call
			return errStopped
		}
		return passthrough.Status(down, s.attachErr, s.attachTrailer)
	case endGone: // nobody hears this status, unless Stop ended the stream
		if stopped {
			return errStopped
		}
		if err := s.ctx.Err(); err != nil {
			return status.FromContextError(err).Err()
		}
		return status.Error(codes.Canceled, "the client's call ended")
	case endStatus: // the ending's own status, below
	}
	return passthrough.Status(down, e.err, e.trailer)
}

// stream is one relayed client stream.
type stream struct {
	r    *Relay
	down grpc.ServerStream
	ctx  context.Context // the client's call's, also ended by Relay.Stop
	done chan struct{}   // closed when Serve returns: the reader stops waiting

	// The reader's first request, then the route's arrival for it to go on.
	first  chan firstRequest
	routed chan struct{}

	// The Attach call; answers and attachEnd come from its reader (control.go).
	attach        attachCallStream
	cancelAttach  context.CancelFunc
	answers       chan *routerv1.AttachResponse
	attachEnd     chan struct{} // closed once the call ended, with:
	attachErr     error         // its status (nil: OK)
	attachTrailer metadata.MD

	// The reader's failure: closed once, with failure set (client.go).
	clientFailed chan struct{}
	failure      clientFailure

	// Wake-ups, one pending at most: audio or the half-close for the writer and
	// for the handler, room in the bound for the reader.
	dataForWriter  chan struct{}
	dataForHandler chan struct{}
	space          chan struct{}

	// Set from the route before routed closes, read-only afterwards.
	route    *routerv1.RouteEvent
	limits   *routerv1.RelayLimits
	config   []byte // the route's config request, encoded
	idleWait time.Duration

	mu            sync.Mutex
	log           *failover.ReplayLog
	attached      bool               // an instance holds the stream
	cancelAttempt context.CancelFunc // the current attempt's, while there is one
	failed        bool               // failure is set
	readerWaits   bool               // the reader waits for room in the bound
	requests      int                // client audio requests appended
	lat           latencies

	// The handler's own.
	tracker     *failover.ResultTracker
	responses   int
	summarySent bool
	out         []byte // the response being written to the client

	// The client writer (downstream.go), from the first response on: the
	// response to send, SendMsg's outcome, and the idle timeout of each write.
	toClient     chan *[]byte
	sentToClient chan error
	unread       *time.Timer
}

// firstRequest is the client's first message, or why there is none.
type firstRequest struct {
	raw []byte
	err error // io.EOF: the client half-closed without a request
}

// newStream returns the stream of down, which lives under ctx (down's context,
// or less).
func newStream(r *Relay, down grpc.ServerStream, ctx context.Context) *stream {
	return &stream{
		r:              r,
		down:           down,
		ctx:            ctx,
		done:           make(chan struct{}),
		first:          make(chan firstRequest, 1),
		routed:         make(chan struct{}),
		answers:        make(chan *routerv1.AttachResponse, 1),
		attachEnd:      make(chan struct{}),
		clientFailed:   make(chan struct{}),
		dataForWriter:  make(chan struct{}, 1),
		dataForHandler: make(chan struct{}, 1),
		space:          make(chan struct{}, 1),
		tracker:        failover.NewResultTracker(),
		lat:            latencies{lastSent: time.Now()},
	}
}

// close releases what the stream holds once its handler returns.
func (s *stream) close() {
	close(s.done)
	if s.cancelAttach != nil {
		s.cancelAttach()
	}
	if s.unread != nil {
		s.unread.Stop()
	}
}

// run serves the stream to its end (doc.go draws it).
func (s *stream) run() *ending {
	if e := s.attachCall(); e != nil {
		return e
	}
	first, e := s.awaitFirst()
	if e != nil {
		return e
	}
	// The first place goes with open (open.place): the control plane places the
	// stream as soon as it routed it, a round trip sooner, and an instance with
	// room at once comes with the route. A stream it refuses is never placed.
	s.send(&routerv1.AttachRequest{Event: &routerv1.AttachRequest_Open{Open: &routerv1.OpenEvent{
		FirstRequest: firstForControl(first), Place: true}}})
	placement, e := s.awaitRoute(first == nil)
	if e != nil {
		return e
	}
	attempts := 0
	for {
		if placement == nil {
			if placement, e = s.place(attempts > 0); e != nil {
				return e
			}
		}
		s.mu.Lock()
		restarted := s.log.Restart()
		s.mu.Unlock()
		if !restarted {
			return s.reject(&routerv1.RejectEvent{Reason: &routerv1.RejectEvent_Unreplayable{Unreplayable: true}})
		}
		s.tracker.BeginAttempt(attempts > 0)
		end, e := s.attempt(placement)
		if e != nil {
			return e
		}
		attempts++
		switch end.outcome {
		case outcomeDone:
			return s.finish(nil, nil, end.outcome)
		case outcomeError:
			return s.finish(end.err, end.trailer, end.outcome)
		}
		s.send(&routerv1.AttachRequest{Event: &routerv1.AttachRequest_AttemptEnded{
			AttemptEnded: &routerv1.AttemptEndedEvent{Outcome: end.outcome}}})
		failed := placement
		placement = nil
		if end.outcome == outcomeFull {
			continue
		}
		s.tracker.Failover()
		s.r.log.Warn("instance failed; failing over", "stream", s.route.GetStreamId(),
			"instance", failed.GetInstanceId(), "failovers", s.tracker.Failovers(),
			"code", status.Code(end.err).String())
		s.mu.Lock()
		replayable := s.log.Replayable()
		s.mu.Unlock()
		if !replayable {
			return s.reject(&routerv1.RejectEvent{Reason: &routerv1.RejectEvent_Unreplayable{Unreplayable: true}})
		}
		resume, e := s.audioToResume()
		if e != nil {
			return e
		}
		if !resume {
			return s.finishAfterFailure(failed)
		}
	}
}

// awaitFirst waits for the client's first request; nil when the client
// half-closed without one. The control plane may end the call meanwhile (the
// router drains, or serves its maximum of streams).
func (s *stream) awaitFirst() (*sttv1.StreamingRecognizeRequest, *ending) {
	timer := time.NewTimer(s.r.cfg.IdleTimeout)
	defer timer.Stop()
	var first firstRequest
	select {
	case first = <-s.first:
	case <-s.attachEnd:
		return nil, relayed
	case <-s.ctx.Done():
		return nil, gone
	case <-timer.C:
		return nil, s.reject(&routerv1.RejectEvent{Reason: &routerv1.RejectEvent_StalledWaitingFor{StalledWaitingFor: "streaming_config"}})
	}
	if errors.Is(first.err, io.EOF) {
		return nil, nil
	}
	if first.err != nil {
		return nil, s.recvFailed(first.err)
	}
	var req sttv1.StreamingRecognizeRequest
	if err := proto.Unmarshal(first.raw, &req); err != nil {
		return nil, s.finish(unmarshalError(err), nil, outcomeNone)
	}
	return &req, nil
}

// awaitRoute waits for the answer to open and sets the stream up for it;
// halfClosed when the client half-closed before any request. It returns the
// first placement when it came with the route (nil: it comes on its own).
func (s *stream) awaitRoute(halfClosed bool) (*routerv1.PlacementEvent, *ending) {
	answer, e := s.awaitAnswer(nil, nil)
	if e != nil {
		return nil, e
	}
	route := answer.GetRoute()
	if route == nil {
		return nil, s.broken("answered open with no route")
	}
	log, err := failover.NewReplayLog(failover.ReplayConfig{
		Linear16:       route.GetLinear16(),
		SampleRate:     int64(route.GetSampleRateHertz()),
		ReplayMaxBytes: route.GetLimits().GetReplayMaxBytes(),
		ContextMs:      route.GetLimits().GetFailoverContextMs(),
	})
	if err != nil {
		return nil, s.broken("sent a route the relay cannot follow: " + err.Error())
	}
	config, err := proto.Marshal(route.GetConfig())
	if err != nil {
		return nil, s.broken("sent a config that cannot be encoded: " + err.Error())
	}
	s.route, s.limits, s.config = route, route.GetLimits(), config
	if s.limits == nil {
		s.limits = &routerv1.RelayLimits{}
	}
	s.idleWait = time.Duration(s.limits.GetIdleTimeoutMs()) * time.Millisecond
	if s.idleWait <= 0 {
		s.idleWait = s.r.cfg.IdleTimeout
	}
	s.mu.Lock()
	s.log = log
	s.mu.Unlock()
	close(s.routed)
	if halfClosed {
		s.halfClose() // no request at all: no audio either
	}
	return route.GetPlacement(), nil
}

// bufferedReportAfter is how long a stream waits for its placement before it
// reports the audio it holds unsent: a stream placed sooner reports none,
// which spares the control plane an event per stream when there is room.
const bufferedReportAfter = 20 * time.Millisecond

// place waits for an instance (asking for one when ask: the first is asked
// for with open), telling the control plane how much audio waits unsent once
// the wait passes bufferedReportAfter, then at each news from the client.
func (s *stream) place(ask bool) (*routerv1.PlacementEvent, *ending) {
	if ask {
		s.send(&routerv1.AttachRequest{Event: &routerv1.AttachRequest_Place{Place: &routerv1.PlaceEvent{}}})
	}
	var reported int64
	start := time.Now()
	report := func() {
		if time.Since(start) < bufferedReportAfter {
			return
		}
		s.mu.Lock()
		unsent := s.log.UnsentBytes()
		s.mu.Unlock()
		if unsent != reported {
			reported = unsent
			s.send(&routerv1.AttachRequest{Event: &routerv1.AttachRequest_Buffered{
				Buffered: &routerv1.BufferedEvent{Bytes: unsent}}})
		}
	}
	waited := time.NewTimer(bufferedReportAfter)
	defer waited.Stop()
	answer, e := s.awaitAnswer(report, waited.C)
	if e != nil {
		return nil, e
	}
	placement := answer.GetPlacement()
	if placement == nil {
		return nil, s.broken("answered place with no placement")
	}
	return placement, nil
}

// audioToResume reports whether a new instance is needed after a failure: true
// at once while audio after the last final is kept; while final results cover
// all the audio received, it waits for the client to send more (true) or
// half-close (false: every byte has its final; a new instance would get no
// audio and refuse the stream). A client that sends neither within the idle
// timeout is rejected.
func (s *stream) audioToResume() (bool, *ending) {
	for {
		s.mu.Lock()
		pending, replayable, halfClosed := s.log.Pending(), s.log.Replayable(), s.log.HalfClosed
		s.mu.Unlock()
		if pending || !replayable {
			return true, nil
		}
		if halfClosed {
			return false, nil
		}
		if e := s.awaitData(s.idleWait); e != nil {
			return false, e
		}
	}
}

// awaitData waits for the reader's next news, up to timeout.
func (s *stream) awaitData(timeout time.Duration) *ending {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-s.dataForHandler:
		return nil
	case <-timer.C:
		return s.reject(&routerv1.RejectEvent{Reason: &routerv1.RejectEvent_StalledWaitingFor{StalledWaitingFor: "audio"}})
	case <-s.clientFailed:
		return s.clientEnding()
	case <-s.attachEnd:
		return relayed
	case <-s.ctx.Done():
		return gone
	}
}
