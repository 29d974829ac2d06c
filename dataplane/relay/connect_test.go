package relay

import (
	"testing"

	"google.golang.org/protobuf/proto"

	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
)

func TestBatchLenKeepsABatchUnderItsBoundAndTakesAtLeastOneEvent(t *testing.T) {
	ev := func(bytes int) *routerv1.StreamEvent {
		return &routerv1.StreamEvent{Stream: 7, Kind: &routerv1.StreamEvent_Event{Event: &routerv1.AttachRequest{
			Event: &routerv1.AttachRequest_Reject{Reject: &routerv1.RejectEvent{
				Reason: &routerv1.RejectEvent_StalledWaitingFor{StalledWaitingFor: string(make([]byte, bytes))}}}}}}
	}
	one := proto.Size(ev(100))
	events := []*routerv1.StreamEvent{ev(100), ev(100), ev(100), ev(100), ev(100)}
	for _, c := range []struct{ maxBytes, want int }{
		{5 * one, 5}, {3 * one, 3}, {3*one + one/2, 3}, {one, 1}, {1, 1},
	} {
		if got := batchLen(events, c.maxBytes); got != c.want {
			t.Errorf("batchLen(5 x %d bytes, %d) = %d, want %d", one, c.maxBytes, got, c.want)
		}
	}
	// An event larger than the bound goes alone.
	big := []*routerv1.StreamEvent{ev(5000), ev(100)}
	if got := batchLen(big, 1000); got != 1 {
		t.Errorf("a large first event: batchLen = %d, want 1", got)
	}
	if got := batchLen(events[:1], 1); got != 1 {
		t.Errorf("one event: batchLen = %d", got)
	}
}
