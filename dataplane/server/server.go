// Package server wires the router's data path together: one grpc-go server on
// the public endpoint with no registered service, whose every call goes to the
// native StreamingRecognize relay (package relay) or, for any other method, to
// the control plane unchanged (package forward); the connection to the control
// plane's Attach; and the connections to instances (package instances).
package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	// Clients may compress their messages with gzip, as gRPC clients can: grpc-go
	// takes (and answers with) only the compressors registered, and the Python
	// router and the instances take gzip.
	_ "google.golang.org/grpc/encoding/gzip"

	"github.com/voxmesh/voxmesh/dataplane/forward"
	"github.com/voxmesh/voxmesh/dataplane/instances"
	"github.com/voxmesh/voxmesh/dataplane/relay"
	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
	"github.com/voxmesh/voxmesh/internal/rawcodec"
)

// DefaultMaxMessageBytes is the voxmesh services' gRPC message limit
// (src/voxmesh/rpc/server.py), which bounds unary Recognize requests.
const DefaultMaxMessageBytes = 20 * 1024 * 1024

// ControlHeadroomBytes is what the connection to the control plane takes beyond
// MaxMessageBytes, both ways: the Connect call carries a client's first request
// (up to MaxMessageBytes) in an open event, and the control plane sends its
// config back in the route, each with a few fields around it. The control
// plane's server takes as much (services/router/connect.py,
// CONNECT_MAX_MESSAGE_BYTES).
const ControlHeadroomBytes = 64 * 1024

// Options configure a Server.
type Options struct {
	// Listen is the public endpoint, host:port (port 0: any free one).
	Listen string
	// Control is the control plane's gRPC target, "unix:/path".
	Control string
	// Forward is where every method but StreamingRecognize goes, "unix:/path".
	Forward string
	// TLS, when not nil, is served on the public endpoint (see LoadTLS).
	TLS credentials.TransportCredentials
	// IdleTimeout is the longest wait for a client's first request (the router's
	// idle timeout; later waits take the route's).
	IdleTimeout time.Duration
	// ControlTimeout bounds the wait for the control plane to end a stream's call
	// once the data path is done with it.
	ControlTimeout time.Duration
	// ControlBatchWait is how long the data path gathers events for the control
	// plane after sending it a batch (relay.Config.ControlBatchWait).
	ControlBatchWait time.Duration
	// InstanceIdle is how long a connection to an instance stays open unused.
	InstanceIdle time.Duration
	// MaxMessageBytes is the largest message taken or sent, on every connection
	// but the control plane's, which takes ControlHeadroomBytes more.
	MaxMessageBytes int
	// Tuning are gRPC options: transport buffers and server workers.
	Tuning Tuning
	// Logger gets the data path's log lines; nil logs nothing.
	Logger *slog.Logger
}

// Tuning are the grpc-go options the data path sets on its server and clients
// (0 keeps grpc-go's default).
type Tuning struct {
	// WriteBufferBytes sizes each connection's write buffer.
	WriteBufferBytes int
	// ReadBufferBytes sizes each connection's read buffer.
	ReadBufferBytes int
	// SharedWriteBuffer releases a connection's write buffer between writes.
	SharedWriteBuffer bool
	// StreamWorkers serves calls on a pool of this many goroutines rather than
	// one new goroutine per call.
	StreamWorkers uint32
}

// Server is the data path.
type Server struct {
	lis       net.Listener
	srv       *grpc.Server
	relay     *relay.Relay
	control   *grpc.ClientConn
	forward   *grpc.ClientConn
	instances *instances.Pool
}

// New binds the public endpoint and sets up the server; nothing is served until
// Serve. Connections to the control plane are made lazily: a control plane that
// is not there yet, or gone, fails the streams that need it with UNAVAILABLE.
func New(o Options) (*Server, error) {
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	clientOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(o.MaxMessageBytes),
			grpc.MaxCallSendMsgSize(o.MaxMessageBytes)),
		// A restarted instance or control plane is found again within 2 s.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second,
		}, MinConnectTimeout: 5 * time.Second}),
	}
	if o.Tuning.WriteBufferBytes != 0 {
		clientOpts = append(clientOpts, grpc.WithWriteBufferSize(o.Tuning.WriteBufferBytes))
	}
	if o.Tuning.ReadBufferBytes != 0 {
		clientOpts = append(clientOpts, grpc.WithReadBufferSize(o.Tuning.ReadBufferBytes))
	}
	if o.Tuning.SharedWriteBuffer {
		clientOpts = append(clientOpts, grpc.WithSharedWriteBuffer(true))
	}
	raw := grpc.WithDefaultCallOptions(grpc.ForceCodec(rawcodec.Codec{}))

	controlMax := o.MaxMessageBytes + ControlHeadroomBytes
	control, err := grpc.Dial(o.Control, append(clientOpts, grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(controlMax), grpc.MaxCallSendMsgSize(controlMax)))...)
	if err != nil {
		return nil, fmt.Errorf("--control %s: %w", o.Control, err)
	}
	forwardConn, err := grpc.Dial(o.Forward, append(clientOpts, raw)...)
	if err != nil {
		control.Close()
		return nil, fmt.Errorf("--forward %s: %w", o.Forward, err)
	}
	pool := instances.NewPool(o.InstanceIdle, append(clientOpts, raw)...)
	rel := relay.New(relay.Config{
		Control:          routerv1.NewDataPlaneServiceClient(control),
		Instances:        pool,
		IdleTimeout:      o.IdleTimeout,
		ControlTimeout:   o.ControlTimeout,
		ControlBatchWait: o.ControlBatchWait,
		// A stream whose event outgrows even this ends alone (relay.Config).
		ControlMaxMessageBytes: controlMax,
		Logger:                 o.Logger,
	})
	fwd := forward.New(forwardConn)

	serverOpts := []grpc.ServerOption{
		grpc.ForceServerCodec(rawcodec.Codec{}),
		grpc.MaxRecvMsgSize(o.MaxMessageBytes),
		grpc.MaxSendMsgSize(o.MaxMessageBytes),
		grpc.UnknownServiceHandler(func(_ any, down grpc.ServerStream) error {
			if method, _ := grpc.MethodFromServerStream(down); method == relay.Method {
				return rel.Serve(down)
			}
			return fwd.Forward(down)
		}),
	}
	if o.TLS != nil {
		serverOpts = append(serverOpts, grpc.Creds(o.TLS))
	}
	if o.Tuning.WriteBufferBytes != 0 {
		serverOpts = append(serverOpts, grpc.WriteBufferSize(o.Tuning.WriteBufferBytes))
	}
	if o.Tuning.ReadBufferBytes != 0 {
		serverOpts = append(serverOpts, grpc.ReadBufferSize(o.Tuning.ReadBufferBytes))
	}
	if o.Tuning.SharedWriteBuffer {
		serverOpts = append(serverOpts, grpc.SharedWriteBuffer(true))
	}
	if o.Tuning.StreamWorkers != 0 {
		serverOpts = append(serverOpts, grpc.NumStreamWorkers(o.Tuning.StreamWorkers))
	}

	lis, err := net.Listen("tcp", o.Listen)
	if err != nil {
		control.Close()
		forwardConn.Close()
		return nil, &ListenError{Address: o.Listen, Err: err}
	}
	return &Server{
		lis:       lis,
		srv:       grpc.NewServer(serverOpts...),
		relay:     rel,
		control:   control,
		forward:   forwardConn,
		instances: pool,
	}, nil
}

// Port returns the bound port of the public endpoint.
func (s *Server) Port() int { return s.lis.Addr().(*net.TCPAddr).Port }

// Serve serves until Shutdown; it returns nil after a shutdown.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.lis)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// stopGrace is how long the calls still under way at the end of a drain get to
// end once the relayed streams are cancelled (which takes them milliseconds):
// then every connection is closed.
const stopGrace = time.Second

// Shutdown stops taking calls and gives those under way up to drain to end,
// then cancels what is left: each relayed stream ends with UNAVAILABLE, and
// whatever has not ended within stopGrace is cut with its connection. It
// returns whether the calls all ended of their own. A drain of 0 (the router's,
// which drained itself before) cancels at once.
func (s *Server) Shutdown(drain time.Duration) bool {
	drained := make(chan struct{})
	go func() {
		s.srv.GracefulStop()
		close(drained)
	}()
	ok := true
	if !within(drained, drain) {
		ok = s.relay.Stop() == 0
		if !within(drained, stopGrace) {
			ok = false
			s.srv.Stop()
			<-drained
		}
	}
	s.instances.Close()
	s.forward.Close()
	s.control.Close()
	return ok
}

// within reports whether done closed within d.
func within(done <-chan struct{}, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-done:
		return true
	case <-timer.C:
		return false
	}
}

// ListenError is the error of New when the public endpoint cannot be bound (a
// busy port, an address not on this host).
type ListenError struct {
	// Address is the --listen address.
	Address string
	// Err is the reason.
	Err error
}

// Error says which address could not be bound, and why.
func (e *ListenError) Error() string {
	return fmt.Sprintf("--listen %s: %v", e.Address, e.Err)
}

// Unwrap returns the reason.
func (e *ListenError) Unwrap() error { return e.Err }
