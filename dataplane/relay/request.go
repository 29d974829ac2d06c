package relay

import (
	"unsafe"

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

// The audio the relay keeps in its failover.ReplayLog always lies in memory
// right behind the encoding of the request that carries it: every chunk
// appended is raw[h:] of a request raw whose h first bytes are audio_content's
// tag and length, and nothing else (the client's own bytes when it encoded the
// request so, a copy made so otherwise). So the request of a whole chunk is
// found again without a copy (wholeRequest), and the client's bytes go to the
// instance as they came. Only the first chunk sent after a ReplayLog.Restart
// may be the tail of a kept chunk; it is encoded anew.

// clientRequest is what the relay needs of a client request after the first.
type clientRequest struct {
	// audio is the chunk of an audio request, laid out as the comment above says.
	audio []byte
	// bad is the request when it carries no audio (a second config, or neither).
	bad *sttv1.StreamingRecognizeRequest
}

// parseRequest reads a request after the first. The common case (a request
// holding audio_content alone, encoded as protobuf encoders do) costs no
// allocation; any other encoding is decoded in full. It errs only when raw is
// not a StreamingRecognizeRequest.
func parseRequest(raw []byte) (clientRequest, error) {
	if audio, ok := canonicalAudio(raw); ok {
		return clientRequest{audio: audio}, nil
	}
	var req sttv1.StreamingRecognizeRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		return clientRequest{}, err
	}
	audio, ok := req.StreamingRequest.(*sttv1.StreamingRecognizeRequest_AudioContent)
	if !ok {
		return clientRequest{bad: &req}, nil
	}
	return clientRequest{audio: encodeAudio(audio.AudioContent)}, nil
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

// encodeAudio returns a copy of audio laid out behind a request's header.
func encodeAudio(audio []byte) []byte {
	raw := encodeRequest(audio)
	return raw[len(raw)-len(audio):]
}

// encodeRequest returns the request that carries audio, in a buffer of its own.
func encodeRequest(audio []byte) []byte {
	buf := make([]byte, 0, 1+protowire.SizeVarint(uint64(len(audio)))+len(audio))
	buf = append(buf, audioTag)
	buf = protowire.AppendVarint(buf, uint64(len(audio)))
	return append(buf, audio...)
}

// requestOf returns the request that carries audio, a chunk the ReplayLog
// returned: without a copy when the chunk is whole (maybeCut false: not the
// first chunk after a restart), else encoded anew.
func requestOf(audio []byte, maybeCut bool) []byte {
	if len(audio) == 0 {
		return emptyAudio
	}
	if !maybeCut {
		if raw, ok := wholeRequest(audio); ok {
			return raw
		}
	}
	return encodeRequest(audio)
}

// wholeRequest returns the request whose encoding ends with audio, a whole
// chunk appended to the log (see above): its header lies in the same
// allocation, right before the audio. The header is checked, so a chunk that
// broke the layout would be encoded anew rather than sent wrong.
func wholeRequest(audio []byte) ([]byte, bool) {
	h := 1 + protowire.SizeVarint(uint64(len(audio)))
	start := unsafe.Add(unsafe.Pointer(unsafe.SliceData(audio)), -h)
	raw := unsafe.Slice((*byte)(start), h+len(audio))
	if raw[0] != audioTag {
		return nil, false
	}
	if n, m := protowire.ConsumeVarint(raw[1:h]); m != h-1 || n != uint64(len(audio)) {
		return nil, false
	}
	return raw, true
}
