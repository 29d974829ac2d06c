package relay

import (
	"context"
	"fmt"
	"reflect"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
)

func TestBatchLenKeepsABatchUnderItsBoundAndTakesAtLeastOneEvent(t *testing.T) {
	ev := func(bytes int) *routerv1.StreamEvent {
		return &routerv1.StreamEvent{Stream: 7, Kind: &routerv1.StreamEvent_Event{Event: &routerv1.AttachRequest{
			Event: &routerv1.AttachRequest_Reject{Reject: &routerv1.RejectEvent{
				Reason: &routerv1.RejectEvent_StalledWaitingFor{StalledWaitingFor: string(make([]byte, bytes))}}}}}}
	}
	one := proto.Size(&routerv1.ConnectRequest{Events: []*routerv1.StreamEvent{ev(100)}}) // an event as a batch holds it
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

func TestAnEventTooLargeForTheCallEndsItsStreamAlone(t *testing.T) {
	s := &session{wake: make(chan struct{}, 1), maxBytes: 1000,
		streams: make(map[uint64]*carried), broken: make(chan struct{})}
	ctx := context.Background()
	big, other := s.begin(ctx), s.begin(ctx)
	stalled := func(n int) *routerv1.AttachRequest {
		return &routerv1.AttachRequest{Event: &routerv1.AttachRequest_Reject{Reject: &routerv1.RejectEvent{
			Reason: &routerv1.RejectEvent_StalledWaitingFor{StalledWaitingFor: string(make([]byte, n))}}}}
	}
	if err := big.Send(stalled(2000)); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Send of an event over the limit: %v", err)
	}
	if _, err := big.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("the stream ended with %v", err)
	}
	if err := other.Send(stalled(500)); err != nil {
		t.Fatalf("Send on the other stream: %v", err)
	}
	if err := big.Send(stalled(10)); err == nil {
		t.Error("the ended stream took another event")
	}
	// Queued: the two begins, the cancel of the stream too large (the control
	// plane releases it), the other stream's event; nothing of the large one.
	var kinds []string
	for _, ev := range s.pending {
		kinds = append(kinds, fmt.Sprintf("%d:%T", ev.GetStream(), ev.GetKind()))
		if proto.Size(ev) > s.maxBytes {
			t.Errorf("queued an event of %d bytes", proto.Size(ev))
		}
	}
	want := []string{"0:*routerv1.StreamEvent_Begin", "1:*routerv1.StreamEvent_Begin",
		"0:*routerv1.StreamEvent_Cancel", "1:*routerv1.StreamEvent_Event"}
	if !reflect.DeepEqual(kinds, want) {
		t.Errorf("queued %v, want %v", kinds, want)
	}
	if s.failed() {
		t.Error("the session failed")
	}
}
