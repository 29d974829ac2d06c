// Package forward hands a call the data path does not serve itself to the
// router's control plane, which serves it: unary Recognize, TelemetryService,
// grpc.health.v1.Health, server reflection, and any method it does not know.
//
// The call is opened upstream as a bidirectional stream on the same method (on
// the wire every gRPC call is one), with the client's metadata and deadline, and
// its messages are copied both ways as raw bytes, never parsed. The upstream's
// response headers, messages, trailers and status (code, message and details)
// reach the client unchanged, so the client cannot tell the control plane
// answered through the data path.
package forward

import (
	"context"
	"errors"
	"io"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/voxmesh/voxmesh/dataplane/internal/passthrough"
)

// anyCall opens every method alike: a stream both ways carries a unary or
// server-streaming call as well.
var anyCall = grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// Forwarder relays calls to one upstream connection.
type Forwarder struct {
	conn *grpc.ClientConn
}

// New returns a Forwarder to conn, whose calls must use a codec that passes
// messages through as bytes (internal/rawcodec).
func New(conn *grpc.ClientConn) *Forwarder { return &Forwarder{conn: conn} }

// Forward relays down, a server call of any method, to the upstream until the
// upstream ends it, and returns the upstream's status for the server to send.
// A client that leaves cancels the upstream call.
func (f *Forwarder) Forward(down grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(down)
	ctx, cancel := context.WithCancel(down.Context())
	defer cancel()
	in, _ := metadata.FromIncomingContext(ctx)
	ctx = metadata.NewOutgoingContext(ctx, forwardable(in))
	up, err := f.conn.NewStream(ctx, &anyCall, method)
	if err != nil {
		return passthrough.Status(down, err, nil)
	}
	go copyRequests(down, up)
	// Headers first, as the upstream sent them (none for a trailers-only answer).
	if header, _ := up.Header(); header != nil {
		if err := down.SendHeader(header); err != nil {
			return err
		}
	}
	var msg []byte
	for {
		if err := up.RecvMsg(&msg); err != nil {
			return passthrough.Status(down, err, up.Trailer())
		}
		if err := down.SendMsg(&msg); err != nil {
			return err // the client is gone; the deferred cancel ends the upstream call
		}
	}
}

// copyRequests sends the client's messages upstream and half-closes after its
// last one. It ends at the first error of either side: the upstream's status is
// read by Forward, and a client that left cancels the call.
func copyRequests(down grpc.ServerStream, up grpc.ClientStream) {
	var msg []byte
	for {
		if err := down.RecvMsg(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				_ = up.CloseSend()
			}
			return
		}
		if up.SendMsg(&msg) != nil {
			return
		}
	}
}

// forwardable returns the client's metadata without the entries gRPC itself
// writes on every call (pseudo-headers, content type, user agent, encodings,
// timeout): the upstream call gets its own, and the deadline travels as the
// context's.
func forwardable(in metadata.MD) metadata.MD {
	out := make(metadata.MD, len(in))
	for key, values := range in {
		if strings.HasPrefix(key, ":") || transportKeys[key] {
			continue
		}
		out[key] = values
	}
	return out
}

var transportKeys = map[string]bool{
	"content-type":         true,
	"user-agent":           true,
	"te":                   true,
	"grpc-accept-encoding": true,
	"grpc-encoding":        true,
	"grpc-timeout":         true,
}
