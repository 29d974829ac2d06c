package instances

import (
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func TestOneConnectionPerTargetClosedWhenIdle(t *testing.T) {
	p := NewPool(20*time.Millisecond, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer p.Close()
	a1, err := p.Get("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := p.Get("127.0.0.1:1")
	b, _ := p.Get("127.0.0.1:2")
	if a1.Conn != a2.Conn || a1.Conn == b.Conn || p.Len() != 2 {
		t.Fatalf("connections: %p %p %p, %d in the pool", a1.Conn, a2.Conn, b.Conn, p.Len())
	}
	a1.Release()
	a1.Release() // a second release is a no-op
	b.Release()
	waitLen(t, p, 1) // b's closed, a's still leased
	a2.Release()
	again, _ := p.Get("127.0.0.1:1") // leased again before its idle period ended, or anew
	waitLen(t, p, 1)
	again.Release()
	waitLen(t, p, 0)
}

func TestClosedPoolLeasesNothing(t *testing.T) {
	p := NewPool(time.Minute, grpc.WithTransportCredentials(insecure.NewCredentials()))
	l, _ := p.Get("127.0.0.1:1")
	p.Close()
	p.Close()
	l.Release()
	if _, err := p.Get("127.0.0.1:1"); err == nil {
		t.Error("a closed pool leased a connection")
	}
}

// waitLen waits until the pool holds n connections, for 5 s at most.
func waitLen(t *testing.T, p *Pool, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.Len() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections, want %d", p.Len(), n)
		}
		time.Sleep(time.Millisecond)
	}
}
