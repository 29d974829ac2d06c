package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/voxmesh/voxmesh/dataplane/internal/controldouble"
	"github.com/voxmesh/voxmesh/dataplane/internal/fakeinstance"
	"github.com/voxmesh/voxmesh/dataplane/server"
	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// Stream figures of the tests: 16 kHz LINEAR16 in 100 ms chunks, utterances of 1 s.
const (
	rate        = 16000
	chunkBytes  = rate / 10 * 2
	utteranceMs = 1000
	waitLimit   = 10 * time.Second // what a condition gets before a test fails
)

// harness is a data path between a control plane double and the test's client,
// with a forward upstream when the test gives one.
type harness struct {
	t      *testing.T
	dir    string
	double *controldouble.Double
	client sttv1.RecognizerServiceClient
	conn   *grpc.ClientConn
	dp     *server.Server
	// stopControl stops serving the double (nil without one).
	stopControl func()
}

// start serves double and, if not nil, forward (on the forward socket), then a
// data path in front with options tweaked by tweak.
func start(t *testing.T, double *controldouble.Double, forward func(*grpc.Server), tweak func(*server.Options)) *harness {
	t.Helper()
	dir := shortTempDir(t)
	var stopControl func()
	if double != nil {
		stop, err := double.Serve(filepath.Join(dir, "control.sock"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		stopControl = stop
	}
	if forward != nil {
		srv := grpc.NewServer(grpc.MaxRecvMsgSize(server.DefaultMaxMessageBytes))
		forward(srv)
		lis, err := net.Listen("unix", filepath.Join(dir, "forward.sock"))
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.Serve(lis) }()
		t.Cleanup(srv.Stop)
	}
	opts := server.Options{
		Listen:         "127.0.0.1:0",
		Control:        "unix:" + filepath.Join(dir, "control.sock"),
		Forward:        "unix:" + filepath.Join(dir, "forward.sock"),
		IdleTimeout:    5 * time.Second,
		ControlTimeout: 5 * time.Second,
		InstanceIdle:   time.Minute,
	}
	if tweak != nil {
		tweak(&opts)
	}
	dp, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- dp.Serve() }()
	t.Cleanup(func() {
		dp.Shutdown(time.Second)
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.Dial(fmt.Sprintf("127.0.0.1:%d", dp.Port()), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &harness{t: t, dir: dir, double: double, client: sttv1.NewRecognizerServiceClient(conn), conn: conn, dp: dp, stopControl: stopControl}
}

// shortTempDir is a temporary directory with a path short enough for Unix
// sockets (t.TempDir's can pass their 108-byte limit).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// instance starts a fake instance named id.
func instance(t *testing.T, id string) *fakeinstance.Instance {
	t.Helper()
	in, err := fakeinstance.Start(fakeinstance.Options{ID: id, Pool: "asr_small", Model: "tiny.en", UtteranceMs: utteranceMs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.Kill)
	return in
}

// placeOn places a stream's n-th place on instances[n] (the last one beyond).
func placeOn(instances ...*fakeinstance.Instance) func(*controldouble.Stream, int) (*routerv1.PlacementEvent, error) {
	ids := []string{}
	for i := range instances {
		ids = append(ids, string(rune('a'+i)))
	}
	return func(_ *controldouble.Stream, n int) (*routerv1.PlacementEvent, error) {
		i := min(n, len(instances)-1)
		return &routerv1.PlacementEvent{InstanceId: ids[i], Target: instances[i].Target(), Model: "tiny.en"}, nil
	}
}

// pcm is deterministic audio of the given length.
func pcm(ms int) []byte {
	b := make([]byte, ms*rate/1000*2)
	rand.New(rand.NewSource(int64(ms))).Read(b)
	return b
}

// clientStream is a StreamingRecognize call of the test's client, with its
// responses collected as they come.
type clientStream struct {
	t      *testing.T
	call   sttv1.RecognizerService_StreamingRecognizeClient
	cancel context.CancelFunc

	mu        sync.Mutex
	responses []*sttv1.StreamingRecognizeResponse
	changed   chan struct{}
	ended     chan struct{}
	err       error // the call's status once ended (nil: OK)
}

// open starts a stream and sends the config (with interim results).
func (h *harness) open(streamID string) *clientStream {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	call, err := h.client.StreamingRecognize(ctx)
	if err != nil {
		cancel()
		h.t.Fatal(err)
	}
	h.t.Cleanup(cancel)
	c := &clientStream{t: h.t, call: call, cancel: cancel, changed: make(chan struct{}), ended: make(chan struct{})}
	go c.receive()
	c.sendRequest(configRequest(streamID))
	return c
}

// configRequest is the first request of the test's streams (with interim results).
func configRequest(streamID string) *sttv1.StreamingRecognizeRequest {
	return &sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_StreamingConfig{
		StreamingConfig: &sttv1.StreamingRecognitionConfig{
			Config: &sttv1.RecognitionConfig{
				Encoding: sttv1.AudioEncoding_AUDIO_ENCODING_LINEAR16, SampleRateHertz: rate,
				Priority: sttv1.Priority_PRIORITY_REALTIME,
			},
			InterimResults: true,
			StreamId:       streamID,
		}}}
}

func (c *clientStream) receive() {
	for {
		r, err := c.call.Recv()
		c.mu.Lock()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				c.err = err
			}
			close(c.ended)
		} else {
			c.responses = append(c.responses, r)
		}
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (c *clientStream) sendRequest(r *sttv1.StreamingRecognizeRequest) {
	c.t.Helper()
	if err := c.call.Send(r); err != nil && !errors.Is(err, io.EOF) {
		c.t.Fatalf("send: %v", err)
	}
}

// send sends audio in chunks of chunkBytes.
func (c *clientStream) send(audio []byte) {
	c.t.Helper()
	for i := 0; i < len(audio); i += chunkBytes {
		c.sendRequest(&sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_AudioContent{
			AudioContent: audio[i:min(i+chunkBytes, len(audio))]}})
	}
}

// waitFor waits until cond holds of the responses so far.
func (c *clientStream) waitFor(what string, cond func([]*sttv1.StreamingRecognizeResponse) bool) {
	c.t.Helper()
	eventually(c.t, what, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return cond(c.responses)
	}, func() <-chan struct{} {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.changed
	})
}

// finish half-closes and waits for the end of the call.
func (c *clientStream) finish() ([]*sttv1.StreamingRecognizeResponse, error) {
	c.t.Helper()
	if err := c.call.CloseSend(); err != nil {
		c.t.Fatal(err)
	}
	return c.wait()
}

// wait waits for the end of the call.
func (c *clientStream) wait() ([]*sttv1.StreamingRecognizeResponse, error) {
	c.t.Helper()
	select {
	case <-c.ended:
	case <-time.After(waitLimit):
		c.t.Fatal("the stream did not end")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.responses, c.err
}

// eventually waits until cond holds, waking at each close of wake()'s channel,
// for waitLimit at most.
func eventually(t *testing.T, what string, cond func() bool, wake func() <-chan struct{}) {
	t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		ch := wake()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// finals returns the transcripts and utterance indices of the final results.
func finals(rs []*sttv1.StreamingRecognizeResponse) (texts []string, indices []int32) {
	for _, r := range rs {
		if res := r.GetResult(); res.GetIsFinal() {
			texts = append(texts, res.GetAlternatives()[0].GetTranscript())
			indices = append(indices, res.GetUtteranceIndex())
		}
	}
	return texts, indices
}

// countFinals counts the final results.
func countFinals(rs []*sttv1.StreamingRecognizeResponse) int {
	texts, _ := finals(rs)
	return len(texts)
}

// nextStream waits for the double's next Attach call.
func nextStream(t *testing.T, d *controldouble.Double) *controldouble.Stream {
	t.Helper()
	select {
	case s := <-d.Streams():
		return s
	case <-time.After(waitLimit):
		t.Fatal("no Attach call")
	}
	return nil
}

// ended waits for the end of a double's call.
func ended(t *testing.T, s *controldouble.Stream) {
	t.Helper()
	select {
	case <-s.Ended():
	case <-time.After(waitLimit):
		t.Fatal("the Attach call did not end")
	}
}

// outcomes returns the attempt outcomes a double's call reported, and whether
// it got finished (and its code).
func outcomes(s *controldouble.Stream) (out []routerv1.AttemptEndedEvent_Outcome, finished *routerv1.FinishedEvent) {
	for _, ev := range s.Events() {
		if a := ev.GetAttemptEnded(); a != nil {
			out = append(out, a.GetOutcome())
		}
		if f := ev.GetFinished(); f != nil {
			finished = f
			if last := f.GetLastAttempt(); last != routerv1.AttemptEndedEvent_OUTCOME_UNSPECIFIED {
				out = append(out, last)
			}
		}
	}
	return out, finished
}
