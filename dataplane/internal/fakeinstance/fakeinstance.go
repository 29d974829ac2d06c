// Package fakeinstance is a test double of an ASR instance, not an instance: the
// real stt.v1 StreamingRecognize protocol on a real gRPC server, no model. It
// "recognises" (package internal/fakeasr) as tests/doubles/fake_asr.py does:
// the stream is cut into utterances of UtteranceMs of stream time, each opened
// by a speech start and closed by a speech end and the final result
// "u<k> <crc32 of its audio>" ending at the utterance's end, so the same audio gives the same finals
// whatever the chunking, the instance, or a failover replay in between. The
// failover metadata is honoured as by the real instances (voxmesh-offset-ms,
// voxmesh-skip-ms, and the lead-in of voxmesh-context-bin, which gets no result).
//
// Controls for tests: SetMaxStreams (RESOURCE_EXHAUSTED, full: a retry delay
// and the INSTANCE_FULL ErrorInfo), RefuseAsStarting (UNAVAILABLE, not
// accepting), FailStreams (streams fail with a status at their next chunk), Kill
// (the server stops at once, like a crash); Options.InterimPadding makes interim
// results large.
package fakeinstance

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
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
	// InterimPadding is the bytes of filler after each interim transcript
	// (finals have none): a test fills a client's flow-control window with a
	// few.
	InterimPadding int
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
	return fakeasr.ExpectedFinals(pcm, rate, utteranceMs)
}

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
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(500 * time.Millisecond)},
				&errdetails.ErrorInfo{Reason: "INSTANCE_FULL", Domain: "voxmesh.dev"})
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
	interimEvery := 0
	if cfg.GetInterimResults() {
		interimEvery = 1
	}
	send := stream.Send
	if pad := r.in.opts.InterimPadding; pad > 0 {
		filler := " " + strings.Repeat("x", pad)
		send = func(resp *sttv1.StreamingRecognizeResponse) error {
			if res := resp.GetResult(); res != nil && !res.GetIsFinal() && len(res.GetAlternatives()) > 0 {
				res.GetAlternatives()[0].Transcript += filler
			}
			return stream.Send(resp)
		}
	}
	u := fakeasr.New(fakeasr.Config{
		Rate: rate, UtteranceMs: r.in.opts.UtteranceMs, InterimEvery: interimEvery,
		OffsetMs: resume.OffsetMs, SkipUntilMs: max(resume.SkipMs, resume.OffsetMs) + resume.LeadInMs,
	}, send)
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
		if err := u.Feed(data); err != nil {
			return err
		}
	}
	if received == 0 {
		return status.Error(codes.InvalidArgument, "empty stream: no audio was sent after the config")
	}
	if err := u.Finish(); err != nil {
		return err
	}
	return stream.Send(&sttv1.StreamingRecognizeResponse{StreamingResponse: &sttv1.StreamingRecognizeResponse_Summary{
		Summary: &sttv1.StreamSummary{
			AudioProcessed: u.Processed(), InstanceId: r.in.opts.ID, Model: r.in.opts.Model,
			Pool: r.in.opts.Pool, StreamId: cfg.GetStreamId(), FinalResults: u.Finals(),
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
