package main

import (
	"errors"

	"google.golang.org/protobuf/encoding/protowire"

	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// The fields isInterim reads, found by name in the generated descriptors.
var (
	responseOneof = (&sttv1.StreamingRecognizeResponse{}).ProtoReflect().Descriptor().
			Oneofs().ByName("streaming_response").Fields()
	resultField  = responseOneof.ByName("result").Number()
	isFinalField = (&sttv1.StreamingRecognitionResult{}).ProtoReflect().Descriptor().
			Fields().ByName("is_final").Number()
)

var errMalformed = errors.New("malformed StreamingRecognizeResponse")

// isInterim reports whether msg, an encoded StreamingRecognizeResponse, carries
// an interim (non-final) result. It reads the oneof and is_final only, so a
// response costs no allocation; protobuf merge rules apply (the last member of
// the oneof wins, repeated result members merge).
func isInterim(msg []byte) (bool, error) {
	result, final := false, false
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return false, errMalformed
		}
		msg = msg[n:]
		n = protowire.ConsumeFieldValue(num, typ, msg)
		if n < 0 {
			return false, errMalformed
		}
		value := msg[:n]
		msg = msg[n:]
		switch {
		case num == resultField && typ == protowire.BytesType:
			if !result {
				result, final = true, false
			}
			body, _ := protowire.ConsumeBytes(value)
			var err error
			if final, err = lastIsFinal(body, final); err != nil {
				return false, err
			}
		case responseOneof.ByNumber(num) != nil:
			result = false
		}
	}
	return result && !final, nil
}

// lastIsFinal returns the last is_final in an encoded
// StreamingRecognitionResult, or final when it has none.
func lastIsFinal(msg []byte, final bool) (bool, error) {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return false, errMalformed
		}
		msg = msg[n:]
		n = protowire.ConsumeFieldValue(num, typ, msg)
		if n < 0 {
			return false, errMalformed
		}
		if num == isFinalField && typ == protowire.VarintType {
			v, _ := protowire.ConsumeVarint(msg)
			final = protowire.DecodeBool(v)
		}
		msg = msg[n:]
	}
	return final, nil
}
