package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
	"github.com/voxmesh/voxmesh/internal/fakeasr"
)

// Limits and hints of tests/doubles/fake_asr.py's defaults.
const (
	maxChunkBytes    = 1 << 20
	maxStreamSeconds = 3600
	retryAfter       = 500 * time.Millisecond
	containerRate    = 16000 // container bytes count as 16 kHz 16-bit samples
	minSampleRate    = 8000
	maxSampleRate    = 48000
	errorDomain      = "voxmesh.dev"
	notAccepting     = "INSTANCE_NOT_ACCEPTING"
	instanceFull     = "INSTANCE_FULL"
	retryAfterKey    = "retry-after-ms"
)

// backend is the RecognizerService and TelemetryService of the double.
type backend struct {
	sttv1.UnimplementedRecognizerServiceServer
	sttv1.UnimplementedTelemetryServiceServer

	opts    options
	started time.Time

	mu        sync.Mutex
	active    int
	draining  bool
	drainEnds time.Time
	streams   sync.WaitGroup // the admitted streams, for the drain
}

// admit takes a stream or refuses it as the Python double does: UNAVAILABLE
// while draining, RESOURCE_EXHAUSTED with a retry hint at capacity.
func (b *backend) admit(stream grpc.ServerStream) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.draining {
		s, _ := status.New(codes.Unavailable, "the instance is draining; retry on another instance").
			WithDetails(&errdetails.ErrorInfo{Reason: notAccepting, Domain: errorDomain})
		return s.Err()
	}
	if b.active >= b.opts.maxStreams {
		stream.SetTrailer(metadata.Pairs(retryAfterKey, strconv.FormatInt(retryAfter.Milliseconds(), 10)))
		s, _ := status.New(codes.ResourceExhausted,
			fmt.Sprintf("instance is at capacity (%d streams)", b.opts.maxStreams)).
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)},
				&errdetails.ErrorInfo{Reason: instanceFull, Domain: errorDomain})
		return s.Err()
	}
	b.active++
	b.streams.Add(1)
	return nil
}

func (b *backend) release() {
	b.mu.Lock()
	b.active--
	b.mu.Unlock()
	b.streams.Done()
}

// drain refuses new streams and waits up to timeout for the active ones.
func (b *backend) drain(timeout time.Duration) {
	b.mu.Lock()
	b.draining = true
	b.drainEnds = time.Now().Add(timeout)
	b.mu.Unlock()
	idle := make(chan struct{})
	go func() {
		b.streams.Wait()
		close(idle)
	}()
	select {
	case <-idle:
	case <-time.After(timeout):
	}
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// StreamingRecognize is the double's recognition: config first, then
// utterances of --utterance-ms stream time (see package fakeasr), then at the
// half-close the closing final and the summary. Failover metadata is ignored.
func (b *backend) StreamingRecognize(stream sttv1.RecognizerService_StreamingRecognizeServer) error {
	if err := b.admit(stream); err != nil {
		return err
	}
	defer b.release()
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return invalid("empty stream: no streaming_config was sent")
	}
	if err != nil {
		return err
	}
	sc := first.GetStreamingConfig()
	if sc == nil {
		return invalid("the first request must carry streaming_config, not audio")
	}
	if err := b.check(sc); err != nil {
		return err
	}
	linear16 := sc.Config.Encoding == sttv1.AudioEncoding_AUDIO_ENCODING_LINEAR16
	rate := int64(containerRate)
	if linear16 {
		rate = int64(sc.Config.SampleRateHertz)
	}
	interimEvery := 0
	if sc.InterimResults {
		interimEvery = b.opts.interimEvery
	}
	u := fakeasr.New(fakeasr.Config{Rate: rate, UtteranceMs: b.opts.utteranceMs, InterimEvery: interimEvery}, stream.Send)
	received := 0
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		data, err := audioChunk(req)
		if err != nil {
			return err
		}
		if linear16 && len(data)%2 != 0 {
			return invalid("LINEAR16 audio chunk has an odd length (%d bytes)", len(data))
		}
		received += len(data)
		if err := u.Feed(data); err != nil {
			return err
		}
		if u.Sample() > maxStreamSeconds*rate {
			return status.Errorf(codes.OutOfRange, "the stream is longer than the maximum of %d s", maxStreamSeconds)
		}
	}
	if received == 0 {
		return invalid("empty stream: no audio was sent after the config")
	}
	if err := u.Finish(); err != nil {
		return err
	}
	streamID := sc.StreamId
	if streamID == "" {
		streamID = randomID()
	}
	return stream.Send(&sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_Summary{
		Summary: &sttv1.StreamSummary{
			AudioProcessed: u.Processed(),
			InstanceId:     b.opts.instanceID,
			Model:          b.opts.model,
			Pool:           b.opts.pool,
			StreamId:       streamID,
			FinalResults:   u.Finals(),
		},
	}})
}

// check validates a stream's config as the instances do (encoding, sample
// rate, priority, model); language and stream id syntax are not checked.
func (b *backend) check(sc *sttv1.StreamingRecognitionConfig) error {
	c := sc.GetConfig()
	switch {
	case c == nil:
		return invalid("streaming_config.config is required")
	case c.Encoding != sttv1.AudioEncoding_AUDIO_ENCODING_LINEAR16 &&
		c.Encoding != sttv1.AudioEncoding_AUDIO_ENCODING_CONTAINER:
		return invalid("config.encoding %d is not supported", c.Encoding)
	case c.Encoding == sttv1.AudioEncoding_AUDIO_ENCODING_LINEAR16 &&
		(c.SampleRateHertz < minSampleRate || c.SampleRateHertz > maxSampleRate):
		return invalid("config.sample_rate_hertz %d is out of range [%d, %d] for LINEAR16",
			c.SampleRateHertz, minSampleRate, maxSampleRate)
	case c.Priority != sttv1.Priority_PRIORITY_REALTIME && c.Priority != sttv1.Priority_PRIORITY_BATCH:
		return invalid("config.priority %d is not supported", c.Priority)
	case c.Model != "" && c.Model != "auto" && c.Model != b.opts.pool && c.Model != b.opts.model:
		return status.Errorf(codes.NotFound, "model %q is not served here (this instance serves pool %q, model %q)",
			c.Model, b.opts.pool, b.opts.model)
	}
	return nil
}

// audioChunk is the audio of a request after the first.
func audioChunk(req *sttv1.StreamingRecognizeRequest) ([]byte, error) {
	audio, ok := req.StreamingRequest.(*sttv1.StreamingRecognizeRequest_AudioContent)
	switch {
	case req.GetStreamingConfig() != nil:
		return nil, invalid("a stream carries exactly one streaming_config, as its first request")
	case !ok:
		return nil, invalid("a request carries neither streaming_config nor audio_content: " +
			"every request after the first carries audio_content")
	case len(audio.AudioContent) > maxChunkBytes:
		s, _ := status.New(codes.ResourceExhausted, fmt.Sprintf(
			"audio chunk of %d bytes exceeds the maximum chunk size of %d bytes", len(audio.AudioContent), maxChunkBytes)).
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)})
		return nil, s.Err()
	}
	return audio.AudioContent, nil
}

// randomID is a stream id for a client that sent none, like the instances'.
func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
