package controldouble

import (
	"context"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
)

// Connect serves the Attach calls that one Connect call carries, each as
// Attach would serve a call of its own, until the data path ends the call;
// then every stream still carried is cancelled.
func (d *Double) Connect(call routerv1.DataPlaneService_ConnectServer) error {
	d.connects.Add(1)
	c := &connection{call: call, streams: make(map[uint64]*carriedServer)}
	defer func() {
		c.cancelAll()
		c.handlers.Wait() // no Send once Connect returned
	}()
	for {
		req, err := call.Recv()
		if err != nil {
			return nil // the data path ended or cancelled the call
		}
		d.batchMu.Lock()
		d.batches = append(d.batches, len(req.GetEvents()))
		d.batchMu.Unlock()
		for _, ev := range req.GetEvents() {
			switch k := ev.GetKind().(type) {
			case *routerv1.StreamEvent_Begin:
				cs := c.begin(ev.GetStream())
				c.handlers.Add(1)
				go func() {
					defer c.handlers.Done()
					err := d.serve(cs)
					c.end(cs, err)
				}()
			case *routerv1.StreamEvent_Event:
				if cs := c.get(ev.GetStream()); cs != nil {
					cs.put(k.Event)
				}
			case *routerv1.StreamEvent_Cancel:
				if cs := c.get(ev.GetStream()); cs != nil {
					cs.cancel()
				}
			}
		}
	}
}

// connection is one Connect call and the streams it carries.
type connection struct {
	call     routerv1.DataPlaneService_ConnectServer
	handlers sync.WaitGroup // the carried streams' handlers

	sendMu sync.Mutex // one Send at a time

	mu      sync.Mutex
	streams map[uint64]*carriedServer
}

func (c *connection) begin(key uint64) *carriedServer {
	ctx, cancel := context.WithCancel(c.call.Context())
	cs := &carriedServer{conn: c, key: key, ctx: ctx, cancel: cancel, ready: make(chan struct{}, 1)}
	c.mu.Lock()
	c.streams[key] = cs
	c.mu.Unlock()
	return cs
}

func (c *connection) get(key uint64) *carriedServer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[key]
}

// end sends the status the stream's handler returned, unless the stream was
// cancelled, and forgets it.
func (c *connection) end(cs *carriedServer, err error) {
	c.mu.Lock()
	delete(c.streams, cs.key)
	c.mu.Unlock()
	cancelled := cs.ctx.Err() != nil
	cs.cancel()
	if cancelled {
		return
	}
	st := status.Convert(err)
	end := &routerv1.StreamEnd{Code: int32(st.Code()), Message: st.Message()}
	if st.Code() == codes.OK {
		end.Message = ""
	}
	trailer := cs.trailer()
	if len(st.Proto().GetDetails()) > 0 {
		// As gRPC sends a status's details, in the trailer.
		details, merr := proto.Marshal(st.Proto())
		if merr == nil {
			trailer = metadata.Join(trailer, metadata.Pairs(detailsKey, string(details)))
		}
	}
	for key, values := range trailer {
		for _, v := range values {
			end.Trailer = append(end.Trailer, &routerv1.TrailerEntry{Key: key, Value: []byte(v)})
		}
	}
	_ = c.send(&routerv1.StreamAnswer{Stream: cs.key, Kind: &routerv1.StreamAnswer_End{End: end}})
}

func (c *connection) send(a *routerv1.StreamAnswer) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return c.call.Send(&routerv1.ConnectResponse{Answers: []*routerv1.StreamAnswer{a}})
}

func (c *connection) cancelAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cs := range c.streams {
		cs.cancel()
	}
}

// detailsKey is the trailer that carries a status's details.
const detailsKey = "grpc-status-details-bin"

// carriedServer is the server side of one carried stream's call.
type carriedServer struct {
	conn   *connection
	key    uint64
	ctx    context.Context // done once cancelled, ended or the Connect call ended
	cancel context.CancelFunc
	ready  chan struct{} // one pending wake-up of Recv at most

	mu     sync.Mutex
	events []*routerv1.AttachRequest
	md     metadata.MD
}

func (cs *carriedServer) put(ev *routerv1.AttachRequest) {
	cs.mu.Lock()
	cs.events = append(cs.events, ev)
	cs.mu.Unlock()
	select {
	case cs.ready <- struct{}{}:
	default:
	}
}

// Recv returns the stream's next event; the status of a cancelled call once
// the stream is cancelled.
func (cs *carriedServer) Recv() (*routerv1.AttachRequest, error) {
	for {
		cs.mu.Lock()
		if len(cs.events) > 0 {
			ev := cs.events[0]
			cs.events = cs.events[1:]
			cs.mu.Unlock()
			return ev, nil
		}
		cs.mu.Unlock()
		select {
		case <-cs.ready:
		case <-cs.ctx.Done():
			return nil, status.FromContextError(cs.ctx.Err()).Err()
		}
	}
}

// Send sends one answer about the stream.
func (cs *carriedServer) Send(a *routerv1.AttachResponse) error {
	if err := cs.ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	return cs.conn.send(&routerv1.StreamAnswer{Stream: cs.key, Kind: &routerv1.StreamAnswer_Answer{Answer: a}})
}

// Context is done once the stream is cancelled or the Connect call ends.
func (cs *carriedServer) Context() context.Context { return cs.ctx }

// SetTrailer adds md to the trailer the stream ends with.
func (cs *carriedServer) SetTrailer(md metadata.MD) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.md = metadata.Join(cs.md, md)
}

func (cs *carriedServer) trailer() metadata.MD {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.md
}
