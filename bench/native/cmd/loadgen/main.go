// Command loadgen is the Go port of bench/loadgen.py, a load generator for
// StreamingRecognize run as its own process: the same flags, schedule, stdout
// protocol and JSON figures, at a fraction of the CPU, so that a benchmark at
// hundreds of streams measures the server and not the generator.
//
// It opens --streams concurrent streams (spread over --channels connections,
// started over --ramp seconds), each sending one --chunk-ms LINEAR16 chunk
// every --chunk-ms on a fixed real-time schedule, and times every
// --interim-every-th chunk from writing it to receiving the interim result
// the server sends for it (FIFO pairing; final results, events and the
// summary are not timed), and every stream from opening its call to its first
// interim result (first_response_ms: the cost of setting a stream up, a
// proxy's placement included, plus one message). That pairing needs a backend that answers exactly
// those chunks with one interim result each, such as cmd/fakebackend or
// tests.doubles.fake_asr with a long --utterance-ms and the same
// --interim-every.
//
// Protocol on stdout, for an orchestrator: "phase measure" when the warm-up
// ends, "phase done" when the measured window ends, then one JSON line with
// the figures of the window (the keys of bench/loadgen.py). send_lag_ms is
// how late chunks left against their schedule: when it grows, the generator
// itself could not keep up and the level is not sustained.
//
//	voxmesh-loadgen --target 127.0.0.1:50051 --streams 500 --duration 10
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
	"github.com/voxmesh/voxmesh/internal/rawcodec"
)

const method = "/voxmesh.stt.v1.RecognizerService/StreamingRecognize"

var streamDesc = grpc.StreamDesc{StreamName: "StreamingRecognize", ServerStreams: true, ClientStreams: true}

// options are the command line flags, those of bench/loadgen.py.
type options struct {
	target       string
	streams      int
	channels     int
	chunkMs      int
	interimEvery int
	ramp         float64
	warmup       float64
	duration     float64
}

// plan is the schedule shared by every stream, in time since base.
type plan struct {
	base         time.Time
	t0           time.Duration // first stream starts
	ramp         time.Duration
	windowStart  time.Duration // measured window [windowStart, windowEnd)
	windowEnd    time.Duration
	endAt        time.Duration // streams stop writing
	chunk        time.Duration
	streams      int
	interimEvery int
	chunkMsg     []byte // one encoded audio request, shared by every stream
}

func (p *plan) now() time.Duration { return time.Since(p.base) }

func (p *plan) sleepUntil(at time.Duration) {
	if d := at - p.now(); d > 0 {
		time.Sleep(d)
	}
}

func (p *plan) measured(t time.Duration) bool { return p.windowStart <= t && t < p.windowEnd }

// startOf is when stream i starts: the streams spread evenly over the ramp.
func (p *plan) startOf(i int) time.Duration {
	return p.t0 + time.Duration(float64(p.ramp)*float64(i)/float64(max(1, p.streams)))
}

// figures is what one stream saw in the measured window.
type figures struct {
	latencies []time.Duration // chunk written -> its interim result
	sendLags  []time.Duration // chunk written - its scheduled time
	firstResp time.Duration   // call opened -> its first interim result (any time)
	gotFirst  bool            // firstResp is set
	sent      int
	received  int
	err       string // the status code name the stream failed with; "" if it ended OK
}

func main() {
	var o options
	flag.StringVar(&o.target, "target", "", "host:port (required)")
	flag.IntVar(&o.streams, "streams", 100, "concurrent streams")
	flag.IntVar(&o.channels, "channels", 8, "HTTP/2 connections")
	flag.IntVar(&o.chunkMs, "chunk-ms", 100, "audio per chunk and time between chunks, ms")
	flag.IntVar(&o.interimEvery, "interim-every", 1, "chunks per interim result (timed ones)")
	flag.Float64Var(&o.ramp, "ramp", 2.0, "seconds to start all streams")
	flag.Float64Var(&o.warmup, "warmup", 2.0, "seconds before measuring")
	flag.Float64Var(&o.duration, "duration", 10.0, "measured seconds")
	flag.Parse()
	if o.target == "" || o.streams < 0 || o.channels < 1 || o.chunkMs < 1 || o.interimEvery < 1 {
		fmt.Fprintln(os.Stderr, "loadgen: --target is required; --channels, --chunk-ms and --interim-every must be positive")
		flag.Usage()
		os.Exit(2)
	}
	result, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	fmt.Println(string(result))
}

// run opens the connections, runs every stream and returns the JSON line.
func run(o options) ([]byte, error) {
	chunk := time.Duration(o.chunkMs) * time.Millisecond
	chunkMsg, err := proto.Marshal(&sttv1.StreamingRecognizeRequest{
		StreamingRequest: &sttv1.StreamingRecognizeRequest_AudioContent{
			AudioContent: make([]byte, 16000*o.chunkMs/1000*2),
		},
	})
	if err != nil {
		return nil, err
	}
	conns := make([]*grpc.ClientConn, o.channels)
	for i := range conns {
		if conns[i], err = grpc.Dial(o.target, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			return nil, err
		}
	}
	seconds := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	p := &plan{base: time.Now(), t0: 200 * time.Millisecond, ramp: seconds(o.ramp), chunk: chunk,
		streams: o.streams, interimEvery: o.interimEvery, chunkMsg: chunkMsg}
	p.windowStart = p.t0 + p.ramp + seconds(o.warmup)
	p.windowEnd = p.windowStart + seconds(o.duration)
	p.endAt = p.windowEnd + 500*time.Millisecond

	cpu0 := cpuSeconds()
	var wg sync.WaitGroup
	all := make([]figures, o.streams)
	for i := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runStream(conns[i%len(conns)], p, i, &all[i])
		}()
	}
	p.sleepUntil(p.windowStart)
	fmt.Println("phase measure")
	p.sleepUntil(p.windowEnd)
	fmt.Println("phase done")
	wg.Wait()
	cpu := cpuSeconds() - cpu0
	for _, c := range conns {
		c.Close()
	}
	return report(o, all, cpu)
}

// runStream runs stream i from its start until the server ends it, writing on
// a goroutine of its own and reading here.
func runStream(conn *grpc.ClientConn, p *plan, i int, out *figures) {
	p.sleepUntil(p.startOf(i))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opened := p.now()
	stream, err := conn.NewStream(ctx, &streamDesc, method, grpc.ForceCodec(rawcodec.Codec{}))
	if err != nil {
		out.err = codeName(err)
		return
	}
	config, err := proto.Marshal(configOf(fmt.Sprintf("load-%d", i)))
	if err != nil {
		out.err = codeName(err)
		return
	}
	// Send times of the chunks that will be answered, oldest first; sized for
	// every chunk the stream can send, so the writer never blocks on it.
	capacity := int((p.endAt-p.startOf(i))/p.chunk)/p.interimEvery + 2
	pending := make(chan time.Duration, capacity)
	inWindow := int((p.windowEnd-p.windowStart)/p.chunk) + 1
	out.sendLags = make([]time.Duration, 0, inWindow)
	out.latencies = make([]time.Duration, 0, inWindow/p.interimEvery+1)
	written := make(chan struct{})
	go func() {
		defer close(written)
		write(stream, p, config, pending, out)
	}()
	var msg []byte
	for {
		err := stream.RecvMsg(&msg)
		if errors.Is(err, io.EOF) {
			<-written
			return
		}
		if err == nil {
			var interim bool
			if interim, err = isInterim(msg); err == nil && !interim {
				continue
			}
		}
		if err == nil {
			now := p.now()
			if !out.gotFirst {
				out.firstResp, out.gotFirst = now-opened, true
			}
			select {
			case sentAt := <-pending:
				if p.measured(sentAt) {
					out.received++
					out.latencies = append(out.latencies, now-sentAt)
				}
				continue
			default:
				err = status.Error(codes.Internal, "an interim result for no chunk sent")
			}
		}
		out.err = codeName(err)
		cancel()
		<-written
		return
	}
}

// write sends the config, then one chunk per period on the fixed schedule,
// then half-closes; it stops early when the stream fails.
func write(stream grpc.ClientStream, p *plan, config []byte, pending chan<- time.Duration, out *figures) {
	if stream.SendMsg(&config) != nil {
		return
	}
	due := p.now()
	for sent := 1; due < p.endAt; sent++ {
		p.sleepUntil(due)
		now := p.now()
		if sent%p.interimEvery == 0 {
			pending <- now
		}
		if stream.SendMsg(&p.chunkMsg) != nil { // a pointer: no allocation for the interface
			return
		}
		if p.measured(now) {
			out.sent++
			out.sendLags = append(out.sendLags, now-due)
		}
		due += p.chunk
	}
	stream.CloseSend()
}

// configOf is the first request of a stream, the config bench/loadgen.py sends.
func configOf(streamID string) *sttv1.StreamingRecognizeRequest {
	return &sttv1.StreamingRecognizeRequest{
		StreamingRequest: &sttv1.StreamingRecognizeRequest_StreamingConfig{
			StreamingConfig: &sttv1.StreamingRecognitionConfig{
				Config: &sttv1.RecognitionConfig{
					Model:           "asr_small",
					Encoding:        sttv1.AudioEncoding_AUDIO_ENCODING_LINEAR16,
					SampleRateHertz: 16000,
					Priority:        sttv1.Priority_PRIORITY_REALTIME,
				},
				InterimResults: true,
				StreamId:       streamID,
			},
		},
	}
}

// codeName is the name Python's grpc.StatusCode gives the status code of err.
func codeName(err error) string {
	names := [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
		"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
		"UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}
	if c := status.Code(err); int(c) < len(names) {
		return names[c]
	}
	return "UNKNOWN"
}

// cpuSeconds is the user and system CPU time of this process so far.
func cpuSeconds() float64 {
	var u syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &u) != nil {
		return math.NaN()
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano()).Seconds()
}
