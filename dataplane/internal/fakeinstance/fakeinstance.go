// Package fakeinstance is a test double of an ASR instance, not an instance: the
// real stt.v1 StreamingRecognize protocol on a real gRPC server, no model. It
// "recognises" as tests/doubles/fake_asr.py does: the stream is cut into
// utterances of UtteranceMs of stream time, each opened by a speech start and
// closed by a speech end and the final result "u<k> <crc32 of its audio>"
// ending at the utterance's end, so the same audio gives the same finals
// whatever the chunking, the instance, or a failover replay in between. The
// failover metadata is honoured as by the real instances (voxmesh-offset-ms,
// voxmesh-skip-ms, and the lead-in of voxmesh-context-bin, which gets no result).
//
// Controls for tests: SetMaxStreams (RESOURCE_EXHAUSTED with a retry delay),
// RefuseAsStarting (UNAVAILABLE, not accepting), FailStreams (streams fail with a
// status at their next chunk), Kill (the server stops at once, like a crash).
package fakeinstance

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"net"
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
)

// Options are how a fake presents itself and behaves.
type Options struct {
	// ID is the instance id of its summaries.
	ID string
	// Pool and Model are what it claims to serve.
	Pool, Model string
	// MaxStreams is its admission limit (0: no limit; below 0: full, it refuses
	// every stream).
	MaxStreams int
	// UtteranceMs is the stream time per utterance (one final each).
	UtteranceMs int64
}

// Resume is the failover metadata a stream arrived with.
type Resume struct {
	// OffsetMs is voxmesh-offset-ms: the stream time of the first byte.
	OffsetMs int64
	// SkipMs is voxmesh-skip-ms: the audio a container replay discards.
	SkipMs int64
	// LeadInMs is the lead-in of voxmesh-context-bin: context, no results.
	LeadInMs int64
}

// Instance is a running fake.
type Instance struct {
	opts Options
	lis  net.Listener
	srv  *grpc.Server

	mu        sync.Mutex
	active    int
	streams   int
	cancelled int
	resumes   []Resume
	refuse    int
	fault     codes.Code // streams fail with it at their next chunk (OK: none)
	changed   chan struct{}
}

// Start serves a fake on 127.0.0.1, on a free port.
func Start(opts Options) (*Instance, error) {
	if opts.UtteranceMs <= 0 {
		opts.UtteranceMs = 1000
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	in := &Instance{opts: opts, lis: lis, srv: grpc.NewServer(), changed: make(chan struct{})}
	sttv1.RegisterRecognizerServiceServer(in.srv, &recognizer{in: in})
	go func() { _ = in.srv.Serve(lis) }()
	return in, nil
}

// Target is its host:port.
func (in *Instance) Target() string { return in.lis.Addr().String() }

// SetMaxStreams changes its admission limit.
func (in *Instance) SetMaxStreams(n int) {
	in.mu.Lock()
	in.opts.MaxStreams = n
	in.mu.Unlock()
}

// RefuseAsStarting refuses the next n streams as an instance still starting.
func (in *Instance) RefuseAsStarting(n int) {
	in.mu.Lock()
	in.refuse = n
	in.mu.Unlock()
}

// FailStreams makes every active stream (and new one) fail with code at its
// next chunk.
func (in *Instance) FailStreams(code codes.Code) {
	in.mu.Lock()
	in.fault = code
	in.mu.Unlock()
}

// Kill stops the server at once: its connections close under its streams.
func (in *Instance) Kill() { in.srv.Stop() }

// Stats are what a fake counted.
type Stats struct {
	// Active and Streams are the streams being served and admitted in all.
	Active, Streams int
	// Cancelled counts the streams that ended cancelled: by their client, or
	// under a Kill.
	Cancelled int
	// Resumes are the failover metadata of the streams that had some.
	Resumes []Resume
}

// Stats returns its counts now.
func (in *Instance) Stats() Stats {
	in.mu.Lock()
	defer in.mu.Unlock()
	return Stats{in.active, in.streams, in.cancelled, append([]Resume(nil), in.resumes...)}
}

// Changed returns a channel closed at the next change of Stats.
func (in *Instance) Changed() <-chan struct{} {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.changed
}

// notify wakes the waiters of Changed; in.mu is held.
func (in *Instance) notify() {
	close(in.changed)
	in.changed = make(chan struct{})
}

// ExpectedFinals returns the transcripts of the finals the fake gives a whole
// LINEAR16 stream of pcm at rate (fake_asr.expected_finals).
func ExpectedFinals(pcm []byte, rate, utteranceMs int64) []string {
	perWindow := int(utteranceMs * rate / 1000 * 2)
	var out []string
	for k, i := 0, 0; i < len(pcm); k, i = k+1, i+perWindow {
		out = append(out, finalText(int64(k), crc32.ChecksumIEEE(pcm[i:min(i+perWindow, len(pcm))])))
	}
	return out
}

func finalText(window int64, crc uint32) string { return fmt.Sprintf("u%d %08x", window, crc) }

// recognizer is the fake's RecognizerService.
type recognizer struct {
	sttv1.UnimplementedRecognizerServiceServer
	in *Instance
}

func (r *recognizer) admit(stream grpc.ServerStream, resume Resume) error {
	in := r.in
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.refuse > 0 {
		in.refuse--
		st, _ := status.New(codes.Unavailable, "instance "+in.opts.ID+" is still starting").
			WithDetails(&errdetails.ErrorInfo{Reason: "INSTANCE_NOT_ACCEPTING", Domain: "voxmesh.dev"})
		return st.Err()
	}
	if in.opts.MaxStreams < 0 || (in.opts.MaxStreams > 0 && in.active >= in.opts.MaxStreams) {
		stream.SetTrailer(metadata.Pairs("retry-after-ms", "500"))
		st, _ := status.New(codes.ResourceExhausted, fmt.Sprintf("instance is at capacity (%d streams)", in.opts.MaxStreams)).
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(500 * time.Millisecond)})
		return st.Err()
	}
	in.active++
	in.streams++
	if resume != (Resume{}) {
		in.resumes = append(in.resumes, resume)
	}
	in.notify()
	return nil
}

func (r *recognizer) release(cancelled bool) {
	in := r.in
	in.mu.Lock()
	in.active--
	if cancelled {
		in.cancelled++
	}
	in.notify()
	in.mu.Unlock()
}

func (r *recognizer) fault() codes.Code {
	r.in.mu.Lock()
	defer r.in.mu.Unlock()
	return r.in.fault
}

// StreamingRecognize is the fake recognition (see the package comment).
func (r *recognizer) StreamingRecognize(stream sttv1.RecognizerService_StreamingRecognizeServer) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	resume := Resume{OffsetMs: mdInt(md, "voxmesh-offset-ms"), SkipMs: mdInt(md, "voxmesh-skip-ms")}
	if values := md.Get("voxmesh-context-bin"); len(values) > 0 {
		var lead struct {
			LeadInMs int64 `json:"lead_in_ms"`
		}
		if err := json.Unmarshal([]byte(values[0]), &lead); err != nil {
			return status.Errorf(codes.InvalidArgument, "voxmesh-context-bin: %v", err)
		}
		resume.LeadInMs = lead.LeadInMs
	}
	if err := r.admit(stream, resume); err != nil {
		return err
	}
	err := r.serve(stream, resume)
	r.release(stream.Context().Err() != nil)
	return err
}

func (r *recognizer) serve(stream sttv1.RecognizerService_StreamingRecognizeServer, resume Resume) error {
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return status.Error(codes.InvalidArgument, "empty stream: no streaming_config was sent")
	}
	if err != nil {
		return err
	}
	cfg := first.GetStreamingConfig()
	if cfg == nil {
		return status.Error(codes.InvalidArgument, "the first request must carry streaming_config, not audio")
	}
	linear16 := cfg.GetConfig().GetEncoding() == sttv1.AudioEncoding_AUDIO_ENCODING_LINEAR16
	rate := int64(16000)
	if linear16 {
		rate = int64(cfg.GetConfig().GetSampleRateHertz())
	}
	u := &utterances{
		rate: rate, windowSamples: r.in.opts.UtteranceMs * rate / 1000,
		sample:    resume.OffsetMs * rate / 1000,
		skipUntil: (max(resume.SkipMs, resume.OffsetMs) + resume.LeadInMs) * rate / 1000,
		interim:   cfg.GetInterimResults(), send: stream.Send,
	}
	received := 0
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if code := r.fault(); code != codes.OK {
			return status.Error(code, "fake instance failure")
		}
		data := req.GetAudioContent()
		if req.GetStreamingConfig() != nil {
			return status.Error(codes.InvalidArgument, "a stream carries exactly one streaming_config")
		}
		received += len(data)
		if err := u.feed(data); err != nil {
			return err
		}
	}
	if received == 0 {
		return status.Error(codes.InvalidArgument, "empty stream: no audio was sent after the config")
	}
	if err := u.finish(); err != nil {
		return err
	}
	return stream.Send(&sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_Summary{
		Summary: &sttv1.StreamSummary{
			AudioProcessed: u.duration(u.received), InstanceId: r.in.opts.ID, Model: r.in.opts.Model,
			Pool: r.in.opts.Pool, StreamId: cfg.GetStreamId(), FinalResults: u.finals,
		}}})
}

func mdInt(md metadata.MD, key string) int64 {
	values := md.Get(key)
	if len(values) == 0 {
		return 0
	}
	n, _ := strconv.ParseInt(values[0], 10, 64)
	return n
}

// utterances is the bookkeeping of one stream (fake_asr._Stream).
type utterances struct {
	rate, windowSamples int64
	sample, skipUntil   int64 // stream time reached, and the end of what is skipped, in samples
	received            int64 // samples received
	localIndex          int32
	crc                 uint32
	open                bool // the current window has audio
	finals              int32
	interim             bool
	send                func(*sttv1.StreamingRecognizeResponse) error
}

func (u *utterances) duration(sample int64) *durationpb.Duration {
	return durationpb.New(time.Duration(math.Round(float64(sample) * 1e9 / float64(u.rate))))
}

func (u *utterances) feed(data []byte) error {
	samples := int64(len(data) / 2)
	u.received += samples
	for pos := int64(0); pos < samples; {
		if u.sample < u.skipUntil {
			step := min(samples-pos, u.skipUntil-u.sample)
			u.sample += step
			pos += step
			continue
		}
		window := u.sample / u.windowSamples
		boundary := (window + 1) * u.windowSamples
		step := min(samples-pos, boundary-u.sample)
		if !u.open {
			u.open = true
			if err := u.event(sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_STARTED); err != nil {
				return err
			}
		}
		u.crc = crc32.Update(u.crc, crc32.IEEETable, data[pos*2:(pos+step)*2])
		u.sample += step
		pos += step
		if u.sample == boundary {
			if err := u.close(window); err != nil {
				return err
			}
		}
	}
	if u.interim && u.open {
		return u.result(u.sample/u.windowSamples, false)
	}
	return nil
}

func (u *utterances) finish() error {
	if !u.open {
		return nil
	}
	return u.close((u.sample - 1) / u.windowSamples)
}

func (u *utterances) close(window int64) error {
	if err := u.event(sttv1.SpeechEventType_SPEECH_EVENT_TYPE_SPEECH_ENDED); err != nil {
		return err
	}
	if err := u.result(window, true); err != nil {
		return err
	}
	u.localIndex++
	u.finals++
	u.crc = 0
	u.open = false
	return nil
}

func (u *utterances) result(window int64, final bool) error {
	stability := float32(0.5)
	if final {
		stability = 1
	}
	return u.send(&sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_Result{
		Result: &sttv1.StreamingRecognitionResult{
			Alternatives:   []*sttv1.SpeechRecognitionAlternative{{Transcript: finalText(window, u.crc), Confidence: 0.9}},
			IsFinal:        final,
			Stability:      stability,
			StartOffset:    u.duration(max(window*u.windowSamples, u.skipUntil)),
			EndOffset:      u.duration(u.sample),
			UtteranceIndex: u.localIndex,
			LanguageCode:   "en",
		}}})
}

func (u *utterances) event(kind sttv1.SpeechEventType) error {
	return u.send(&sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_SpeechEvent{
		SpeechEvent: &sttv1.SpeechEvent{Type: kind, Offset: u.duration(u.sample)}}})
}
