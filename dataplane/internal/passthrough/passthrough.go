// Package passthrough ends a server call with the status another call ended with:
// its code, message, details and trailing metadata, unchanged. The data path
// uses it for every status it relays rather than words itself: an instance's, the
// control plane's and a forwarded method's.
package passthrough

import (
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	spb "google.golang.org/genproto/googleapis/rpc/status"
)

// DetailsKey is the trailer that carries a status's details (a google.rpc.Status,
// binary): gRPC leaves it in the trailing metadata a client sees.
const DetailsKey = "grpc-status-details-bin"

// Status returns the error a server handler returns to end its call as the
// upstream call that failed with err ended, and sets that call's trailer on down.
//
// The details travel as the upstream sent them: in the trailer's DetailsKey,
// passed on byte for byte, while the returned status carries only the code and
// message (a status with details of its own would make the server write the key
// a second time). A DetailsKey whose code is not err's (grpc-go then reports
// INTERNAL and a mismatch) is dropped. err nil or io.EOF is OK: nil is returned.
func Status(down grpc.ServerStream, err error, trailer metadata.MD) error {
	var st *status.Status
	if err != nil && !errors.Is(err, io.EOF) {
		st = status.Convert(err)
	}
	if len(trailer) > 0 {
		if !detailsMatch(trailer, st) {
			trailer = trailer.Copy()
			delete(trailer, DetailsKey)
		}
		down.SetTrailer(trailer)
	}
	if st == nil || st.Code() == codes.OK {
		return nil
	}
	return status.New(st.Code(), st.Message()).Err()
}

// detailsMatch reports whether the trailer's details, if any, are of st's code.
func detailsMatch(trailer metadata.MD, st *status.Status) bool {
	values := trailer.Get(DetailsKey)
	if len(values) == 0 {
		return true
	}
	var details spb.Status
	if len(values) != 1 || proto.Unmarshal([]byte(values[0]), &details) != nil {
		return false
	}
	code := codes.OK
	if st != nil {
		code = st.Code()
	}
	return codes.Code(details.Code) == code
}
