package relay

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
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

// What an instance's refusal carries (src/voxmesh/rpc/status.py): an ErrorInfo
// of the voxmesh domain that says why.
const (
	errorDomain = "voxmesh.dev"
	// notAcceptingReason: it refuses the stream because it drains or still
	// starts (UNAVAILABLE).
	notAcceptingReason = "INSTANCE_NOT_ACCEPTING"
	// fullReason: it refuses the stream because it serves its maximum of
	// streams (RESOURCE_EXHAUSTED).
	fullReason = "INSTANCE_FULL"
)

// classify returns the outcome of an attempt whose instance call ended with err
// (not io.EOF: that is outcomeDone), as the Python relay's _attempt
// decides it: answered is true once any response arrived, summarySent once the
// client has the summary.
func classify(err error, answered, summarySent bool) routerv1.AttemptEndedEvent_Outcome {
	st := status.Convert(err)
	failed := failoverCode(st.Code())
	switch {
	case failed && summarySent:
		return outcomeDone // only its OK status was lost: the client has everything
	case !answered && (refused(st, codes.ResourceExhausted, fullReason) ||
		refused(st, codes.Unavailable, notAcceptingReason)):
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

// refused reports whether an instance refused the call with code and the
// voxmesh ErrorInfo of reason: full (RESOURCE_EXHAUSTED, INSTANCE_FULL), or not
// accepting (UNAVAILABLE, INSTANCE_NOT_ACCEPTING). Any other RESOURCE_EXHAUSTED
// (a chunk over the instance's limit, with a retry delay or not; gRPC's own, for
// a message over the receiver's size limit) is the request's fault: the next
// instance would refuse it too.
func refused(st *status.Status, code codes.Code, reason string) bool {
	if st.Code() != code {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok &&
			info.GetDomain() == errorDomain && info.GetReason() == reason {
			return true
		}
	}
	return false
}
