package relay

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
)

func TestClassifyAsThePythonRelayDoes(t *testing.T) {
	notAccepting, _ := status.New(codes.Unavailable, "draining").
		WithDetails(&errdetails.ErrorInfo{Domain: errorDomain, Reason: notAcceptingReason})
	otherInfo, _ := status.New(codes.Unavailable, "draining").
		WithDetails(&errdetails.ErrorInfo{Domain: "example.com", Reason: notAcceptingReason})
	retry := &errdetails.RetryInfo{RetryDelay: durationpb.New(2 * time.Second)}
	full, _ := status.New(codes.ResourceExhausted, "instance a is at its limit of 4 concurrent streams").
		WithDetails(retry, &errdetails.ErrorInfo{Domain: errorDomain, Reason: fullReason})
	// What an instance answers a chunk over its own limit: a retry delay, no marker.
	chunk, _ := status.New(codes.ResourceExhausted, "audio chunk of 8000 bytes exceeds the maximum chunk size of 4096 bytes").
		WithDetails(retry)
	fullUnavailable, _ := status.New(codes.Unavailable, "full?").
		WithDetails(&errdetails.ErrorInfo{Domain: errorDomain, Reason: fullReason})
	cases := []struct {
		name                  string
		err                   error
		answered, summarySent bool
		want                  routerv1.AttemptEndedEvent_Outcome
	}{
		{"full", full.Err(), false, false, outcomeFull},
		{"full after a response", full.Err(), true, false, outcomeError},
		{"a chunk too large (a retry delay, no marker)", chunk.Err(), false, false, outcomeError},
		{"too large (gRPC's own)", status.Error(codes.ResourceExhausted, "too large"), false, false, outcomeError},
		{"the full marker on another code", fullUnavailable.Err(), false, false, outcomeFailed},
		{"not accepting", notAccepting.Err(), false, false, outcomeFull},
		{"not accepting after a response", notAccepting.Err(), true, false, outcomeFailed},
		{"unavailable, another domain", otherInfo.Err(), false, false, outcomeFailed},
		{"unavailable", status.Error(codes.Unavailable, "gone"), true, false, outcomeFailed},
		{"cancelled", status.Error(codes.Canceled, "reset"), true, false, outcomeFailed},
		{"unknown", errors.New("broken"), true, false, outcomeFailed},
		{"unavailable after the summary", status.Error(codes.Unavailable, "gone"), true, true, outcomeDone},
		{"invalid", status.Error(codes.InvalidArgument, "bad"), false, false, outcomeError},
		{"internal after the summary", status.Error(codes.Internal, "bug"), true, true, outcomeError},
	}
	for _, c := range cases {
		if got := classify(c.err, c.answered, c.summarySent); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestLatenciesMatchSentRequestsToTheirArrival(t *testing.T) {
	var l latencies
	t0 := time.Unix(100, 0)
	l.arrived(3200, t0)
	l.arrived(6400, t0.Add(time.Second))
	if _, ok := l.sent(1600); ok {
		t.Error("a request not sampled matched")
	}
	if at, ok := l.sent(3200); !ok || !at.Equal(t0) {
		t.Errorf("sent(3200) = %v %v", at, ok)
	}
	if _, ok := l.sent(3200); ok {
		t.Error("a sample matched twice")
	}
	l.arrived(9600, t0)
	if at, ok := l.sent(9600); !ok || !at.Equal(t0) || l.size != 0 {
		t.Errorf("sent(9600) = %v %v; the one skipped is kept: %d", at, ok, l.size)
	}
	for i := 0; i < maxPendingSamples+5; i++ {
		l.arrived(int64(i), t0)
	}
	if l.size != maxPendingSamples {
		t.Errorf("%d pending samples", l.size)
	}
}
