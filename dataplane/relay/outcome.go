package relay

import (
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
)

// Outcomes of an attempt on an instance (AttemptEndedEvent.Outcome).
const (
	// outcomeNone: no attempt ended with the stream (none was held, or its end
	// was reported already).
	outcomeNone   = routerv1.AttemptEndedEvent_OUTCOME_UNSPECIFIED
	outcomeDone   = routerv1.AttemptEndedEvent_OUTCOME_DONE
	outcomeFull   = routerv1.AttemptEndedEvent_OUTCOME_FULL
	outcomeFailed = routerv1.AttemptEndedEvent_OUTCOME_FAILED
	outcomeError  = routerv1.AttemptEndedEvent_OUTCOME_ERROR
)

// What an instance's refusal carries (src/voxmesh/rpc/status.py).
const (
	// retryAfterKey is the trailer of an instance's RESOURCE_EXHAUSTED that
	// says it is full: the delay it asks for, in milliseconds.
	retryAfterKey = "retry-after-ms"
	// errorDomain and notAcceptingReason make the ErrorInfo of an instance that
	// refuses a stream because it drains or still starts.
	errorDomain        = "voxmesh.dev"
	notAcceptingReason = "INSTANCE_NOT_ACCEPTING"
)

// classify returns the outcome of an attempt whose instance call ended with err
// (not io.EOF: that is outcomeDone) and trailer, as the Python relay's _attempt
// decides it: answered is true once any response arrived, summarySent once the
// client has the summary.
func classify(err error, trailer metadata.MD, answered, summarySent bool) routerv1.AttemptEndedEvent_Outcome {
	st := status.Convert(err)
	failed := failoverCode(st.Code())
	switch {
	case failed && summarySent:
		return outcomeDone // only its OK status was lost: the client has everything
	case !answered && (instanceFull(st, trailer) || notAccepting(st)):
		return outcomeFull // it never started there: back to the queue
	case failed:
		return outcomeFailed
	}
	return outcomeError
}

// failoverCode reports whether an instance's status means "the instance failed",
// not "the stream is bad".
func failoverCode(c codes.Code) bool {
	return c == codes.Unavailable || c == codes.Canceled || c == codes.Unknown
}

// instanceFull reports whether an instance refused the call for want of room:
// RESOURCE_EXHAUSTED with a retry delay. gRPC's own RESOURCE_EXHAUSTED (a
// message over the receiver's size limit) carries none: it is the request's
// fault, and the next instance would refuse it too.
func instanceFull(st *status.Status, trailer metadata.MD) bool {
	if st.Code() != codes.ResourceExhausted {
		return false
	}
	values := trailer.Get(retryAfterKey)
	if len(values) == 0 {
		return false
	}
	_, err := strconv.Atoi(values[0])
	return err == nil
}

// notAccepting reports whether an instance refused the call because it drains or
// still starts: UNAVAILABLE with the voxmesh ErrorInfo.
func notAccepting(st *status.Status) bool {
	if st.Code() != codes.Unavailable {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok &&
			info.GetDomain() == errorDomain && info.GetReason() == notAcceptingReason {
			return true
		}
	}
	return false
}
