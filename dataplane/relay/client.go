package relay

import (
	"errors"
	"io"
	"time"

	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// clientFailure is why the client reader stopped before the client's half-close.
type clientFailure struct {
	bad      *sttv1.StreamingRecognizeRequest // a request without audio the relay refuses
	badChunk int64                            // the length of a chunk the relay refuses
	noAudio  bool                             // the client half-closed without audio
	err      error                            // the client call failed
}

// readClient reads the client's requests: the first for the handler, then,
// once the route is known, audio into the ReplayLog until the half-close or a
// failure.
func (s *stream) readClient() {
	var msg []byte
	err := s.down.RecvMsg(&msg)
	s.first <- firstRequest{raw: msg, err: err}
	if err != nil {
		return
	}
	select {
	case <-s.routed:
	case <-s.done:
		return
	}
	for {
		msg = nil
		if err := s.down.RecvMsg(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				s.halfClose()
			} else {
				s.fail(clientFailure{err: err})
			}
			return
		}
		req, err := parseRequest(msg)
		if err != nil {
			s.fail(clientFailure{err: unmarshalError(err)})
			return
		}
		if req.bad != nil {
			s.fail(clientFailure{bad: req.bad})
			return
		}
		if s.refused(req.audio) {
			s.fail(clientFailure{badChunk: int64(len(req.audio))})
			return
		}
		if !s.appendWhenRoom(req) {
			return
		}
	}
}

// refused reports whether the relay refuses a chunk of audio: over
// max_chunk_bytes, or LINEAR16 that is not whole samples (the checks of
// services/router/routing.py's check_chunk, which the control plane words). A
// chunk of no bytes always passes.
func (s *stream) refused(audio []byte) bool {
	n := len(audio)
	return int64(n) > s.limits.GetMaxChunkBytes() || (s.route.GetLinear16() && n%2 != 0)
}

// appendWhenRoom appends a chunk of audio to the log once it fits in the bound
// of unsent audio: RelayLimits.queue_max_bytes while no instance holds the
// stream, relay_buffer_bytes while one does; one chunk always goes when nothing
// is unsent. False when the stream ended meanwhile.
func (s *stream) appendWhenRoom(req clientRequest) bool {
	n := int64(len(req.audio))
	for {
		s.mu.Lock()
		unsent := s.log.UnsentBytes()
		limit := s.limits.GetQueueMaxBytes()
		if s.attached {
			limit = s.limits.GetRelayBufferBytes()
		}
		if unsent == 0 || unsent+n <= limit {
			s.log.AppendRequest(req.audio, req.raw)
			s.requests++
			if s.requests%latencySampleEvery == 0 {
				s.lat.arrived(s.log.TotalBytes(), time.Now())
			}
			attached := s.attached
			s.mu.Unlock()
			signal(s.dataForWriter)
			if !attached { // the handler waits for audio only while no instance holds the stream
				signal(s.dataForHandler)
			}
			return true
		}
		s.readerWaits = true
		s.mu.Unlock()
		select {
		case <-s.space:
		case <-s.done:
			return false
		case <-s.ctx.Done():
			return false
		}
	}
}

// halfClose records the client's half-close: every audio byte is in the log,
// or there is none, which the control plane rejects.
func (s *stream) halfClose() {
	s.mu.Lock()
	empty := s.log.TotalBytes() == 0
	if !empty {
		s.log.HalfClosed = true
	}
	s.mu.Unlock()
	if empty {
		s.fail(clientFailure{noAudio: true})
		return
	}
	s.dataArrived()
}

// fail records the reader's failure, which ends the stream, and interrupts the
// current attempt.
func (s *stream) fail(f clientFailure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed {
		return
	}
	s.failed, s.failure = true, f
	close(s.clientFailed)
	if s.cancelAttempt != nil {
		s.cancelAttempt()
	}
}

// dataArrived wakes the writer and the handler, whichever waits for audio.
func (s *stream) dataArrived() {
	signal(s.dataForWriter)
	signal(s.dataForHandler)
}

// signal leaves a wake-up on c, a channel of capacity 1, unless one is there.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
