package relay

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
)

func TestClassifyAsThePythonRelayDoes(t *testing.T) {
	notAccepting, _ := status.New(codes.Unavailable, "draining").
		WithDetails(&errdetails.ErrorInfo{Domain: errorDomain, Reason: notAcceptingReason})
	otherInfo, _ := status.New(codes.Unavailable, "draining").
		WithDetails(&errdetails.ErrorInfo{Domain: "example.com", Reason: notAcceptingReason})
	retry := metadata.Pairs(retryAfterKey, "500")
	cases := []struct {
		name                  string
		err                   error
		trailer               metadata.MD
		answered, summarySent bool
		want                  routerv1.AttemptEndedEvent_Outcome
	}{
		{"full", status.Error(codes.ResourceExhausted, "full"), retry, false, false, outcomeFull},
		{"full after a response", status.Error(codes.ResourceExhausted, "full"), retry, true, false, outcomeError},
		{"too large (no retry delay)", status.Error(codes.ResourceExhausted, "too large"), nil, false, false, outcomeError},
		{"not accepting", notAccepting.Err(), nil, false, false, outcomeFull},
		{"not accepting after a response", notAccepting.Err(), nil, true, false, outcomeFailed},
		{"unavailable, another domain", otherInfo.Err(), nil, false, false, outcomeFailed},
		{"unavailable", status.Error(codes.Unavailable, "gone"), nil, true, false, outcomeFailed},
		{"cancelled", status.Error(codes.Canceled, "reset"), nil, true, false, outcomeFailed},
		{"unknown", errors.New("broken"), nil, true, false, outcomeFailed},
		{"unavailable after the summary", status.Error(codes.Unavailable, "gone"), nil, true, true, outcomeDone},
		{"invalid", status.Error(codes.InvalidArgument, "bad"), nil, false, false, outcomeError},
		{"internal after the summary", status.Error(codes.Internal, "bug"), nil, true, true, outcomeError},
	}
	for _, c := range cases {
		if got := classify(c.err, c.trailer, c.answered, c.summarySent); got != c.want {
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
