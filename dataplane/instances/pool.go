// Package instances keeps the data path's connections to ASR instances: one
// grpc.ClientConn per instance target, shared by every stream placed there,
// and closed once no stream has used it for an idle period.
package instances

import (
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Pool is the set of connections, one per target. Safe for concurrent use.
type Pool struct {
	dialOpts []grpc.DialOption
	idle     time.Duration

	mu     sync.Mutex
	conns  map[string]*entry
	closed bool
}

type entry struct {
	conn   *grpc.ClientConn
	leases int
	timer  *time.Timer // closes the connection when it fires unleased
	idleAt int         // counts the idle periods begun, so a stale timer knows it is
}

// Lease is one stream's use of a connection; Release it when the attempt ends.
type Lease struct {
	// Conn is the connection to the target.
	Conn *grpc.ClientConn

	pool   *Pool
	target string
	e      *entry
}

// NewPool returns an empty pool whose connections are dialled with dialOpts
// and closed after idle without a lease.
func NewPool(idle time.Duration, dialOpts ...grpc.DialOption) *Pool {
	return &Pool{dialOpts: dialOpts, idle: idle, conns: make(map[string]*entry)}
}

// Get leases the connection to target (host:port), dialling it if the pool has
// none. Dialling does not wait for the connection: a target that cannot be
// reached fails the call made on it. It errs for a target gRPC cannot parse, or
// once the pool is closed.
func (p *Pool) Get(target string) (*Lease, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, status.Error(codes.Canceled, "the instance pool is closed")
	}
	e := p.conns[target]
	if e == nil {
		conn, err := grpc.Dial(target, p.dialOpts...)
		if err != nil {
			return nil, err
		}
		e = &entry{conn: conn}
		p.conns[target] = e
	}
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	e.leases++
	return &Lease{Conn: e.conn, pool: p, target: target, e: e}, nil
}

// Release ends the lease; the connection closes after the pool's idle period
// if no other lease takes it meanwhile. Releasing twice is a no-op.
func (l *Lease) Release() {
	p := l.pool
	if p == nil {
		return
	}
	l.pool = nil
	p.mu.Lock()
	defer p.mu.Unlock()
	e := l.e
	e.leases--
	if e.leases > 0 || p.closed {
		return
	}
	e.idleAt++
	idleAt := e.idleAt
	e.timer = time.AfterFunc(p.idle, func() { p.closeIdle(l.target, e, idleAt) })
}

// closeIdle closes e if it is still the target's connection and has been idle
// since the idle period idleAt began.
func (p *Pool) closeIdle(target string, e *entry, idleAt int) {
	p.mu.Lock()
	if p.conns[target] != e || e.leases > 0 || e.idleAt != idleAt {
		p.mu.Unlock()
		return
	}
	delete(p.conns, target)
	p.mu.Unlock()
	_ = e.conn.Close()
}

// Len returns the number of open connections.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close closes every connection, cancelling the calls on them; Get fails
// afterwards. Idempotent.
func (p *Pool) Close() {
	p.mu.Lock()
	conns := p.conns
	p.conns = map[string]*entry{}
	p.closed = true
	p.mu.Unlock()
	for _, e := range conns {
		if e.timer != nil {
			e.timer.Stop()
		}
		_ = e.conn.Close()
	}
}
