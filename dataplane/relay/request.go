package relay

import (
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// audioField is StreamingRecognizeRequest.audio_content's field number.
const audioField protowire.Number = 2

// audioTag is the first byte of a request that carries audio: field 2,
// length-delimited.
const audioTag = byte(audioField)<<3 | byte(protowire.BytesType)

// emptyAudio is the request of an empty audio chunk.
var emptyAudio = []byte{audioTag, 0}

// The relay keeps each chunk of audio in its failover.ReplayLog with the
// encoded request that carries it (the client's own bytes when it encoded the
// request as protobuf encoders do, a copy made so otherwise), so that a chunk
// that goes to an instance whole goes as the client sent it, without a copy.
// Only the first chunk sent after a ReplayLog.Restart may be the tail of a kept
// one; it is encoded anew.

// clientRequest is what the relay needs of a client request after the first.
type clientRequest struct {
	// audio is the chunk of an audio request.
	audio []byte
	// raw is the request that carries audio alone, encoded (audio is its tail).
	raw []byte
	// bad is the request when it carries no audio (a second config, or neither).
	bad *sttv1.StreamingRecognizeRequest
}

// parseRequest reads a request after the first. The common case (a request
// holding audio_content alone, encoded as protobuf encoders do) costs no
// allocation; any other encoding is decoded in full. It errs only when raw is
// not a StreamingRecognizeRequest.
func parseRequest(raw []byte) (clientRequest, error) {
	if audio, ok := canonicalAudio(raw); ok {
		return clientRequest{audio: audio, raw: raw}, nil
	}
	var req sttv1.StreamingRecognizeRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		return clientRequest{}, err
	}
	audio, ok := req.StreamingRequest.(*sttv1.StreamingRecognizeRequest_AudioContent)
	if !ok {
		return clientRequest{bad: &req}, nil
	}
	encoded := encodeRequest(audio.AudioContent)
	return clientRequest{audio: encoded[len(encoded)-len(audio.AudioContent):], raw: encoded}, nil
}

// canonicalAudio returns the audio of raw if raw is exactly one audio_content
// field with a minimal length prefix.
func canonicalAudio(raw []byte) ([]byte, bool) {
	if len(raw) < 2 || raw[0] != audioTag {
		return nil, false
	}
	n, m := protowire.ConsumeVarint(raw[1:])
	if m < 0 || m != protowire.SizeVarint(n) || uint64(len(raw)-1-m) != n {
		return nil, false
	}
	return raw[1+m:], true
}

// encodeRequest returns the request that carries audio, in a buffer of its own.
func encodeRequest(audio []byte) []byte {
	buf := make([]byte, 0, 1+protowire.SizeVarint(uint64(len(audio)))+len(audio))
	buf = append(buf, audioTag)
	buf = protowire.AppendVarint(buf, uint64(len(audio)))
	return append(buf, audio...)
}

// requestOf returns the request to send for a chunk of audio the ReplayLog
// returned: raw, the request kept with it, when the chunk goes whole; else one
// encoded anew.
func requestOf(audio, raw []byte) []byte {
	switch {
	case raw != nil:
		return raw
	case len(audio) == 0:
		return emptyAudio
	}
	return encodeRequest(audio)
}

// The control plane reads of a client request no more than it needs
// (services/router/control.py): a client message may be as large as the public
// endpoint takes, and the one Connect call that carries it carries every
// stream. What it gets is what it would answer alike.

// firstForControl is what open carries of the client's first request: a config
// whole (the control plane routes it, and sends it back for the instances);
// of any other request only which field it set, enough to refuse it (nil for
// nil: the client sent none).
func firstForControl(req *sttv1.StreamingRecognizeRequest) *sttv1.StreamingRecognizeRequest {
	switch req.GetStreamingRequest().(type) {
	case *sttv1.StreamingRecognizeRequest_StreamingConfig:
		return req
	case *sttv1.StreamingRecognizeRequest_AudioContent:
		return &sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_AudioContent{}}
	}
	if req == nil {
		return nil
	}
	return &sttv1.StreamingRecognizeRequest{}
}

// badForControl is what reject carries of a request after the first that holds
// no audio: which field it set (a second config, emptied), all the control
// plane words its refusal from.
func badForControl(req *sttv1.StreamingRecognizeRequest) *sttv1.StreamingRecognizeRequest {
	if req.GetStreamingConfig() != nil {
		return &sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_StreamingConfig{
			StreamingConfig: &sttv1.StreamingRecognitionConfig{}}}
	}
	return &sttv1.StreamingRecognizeRequest{}
}
