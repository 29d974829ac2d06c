// Package rawcodec is a gRPC codec that hands messages through as raw bytes,
// so a relay or a load generator can move pre-encoded protobuf messages without
// parsing or re-encoding them.
//
// It is forced per call (grpc.ForceCodec) or per server (grpc.ForceServerCodec)
// and keeps the name "proto", so the wire content type stays application/grpc
// and peers see ordinary protobuf messages.
package rawcodec

import "fmt"

// Codec passes []byte through unchanged: Marshal takes a []byte or *[]byte,
// Unmarshal stores the received frame in a *[]byte.
//
// Unmarshal keeps the frame gRPC hands it without a copy: grpc-go v1.61 gives
// every received message a buffer of its own (no receive buffer pool unless
// one is configured), so the bytes stay valid after the call.
type Codec struct{}

// Marshal returns the bytes of v, a []byte or *[]byte.
func (Codec) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case []byte:
		return m, nil
	case *[]byte:
		return *m, nil
	}
	return nil, fmt.Errorf("rawcodec: cannot marshal %T, only []byte or *[]byte", v)
}

// Unmarshal stores data in v, a *[]byte.
func (Codec) Unmarshal(data []byte, v any) error {
	m, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawcodec: cannot unmarshal into %T, only *[]byte", v)
	}
	*m = data
	return nil
}

// Name is "proto": the messages on the wire are protobuf, only left encoded.
func (Codec) Name() string { return "proto" }
