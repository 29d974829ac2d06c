// Command voxmesh-dataplane is the router's native data path: it serves the
// router's public gRPC endpoint, relays every StreamingRecognize stream to ASR
// instances itself (placement asked of the router's control plane over
// protos/voxmesh/router/v1/dataplane.proto) and forwards every other method to
// the control plane unchanged. The router's Python process starts it and
// supervises it.
//
//	voxmesh-dataplane --listen 0.0.0.0:50051 --control unix:/run/voxmesh/control.sock \
//	    --forward unix:/run/voxmesh/forward.sock [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
//
// It prints "PORT <n>" on stdout once serving. On SIGTERM or SIGINT (or, with
// --exit-on-stdin-eof, at the end of stdin: the router died) it stops
// taking calls, gives those under way --drain-timeout to end, cancels the rest
// (a relayed stream's client gets UNAVAILABLE) and exits 0. The router passes
// --drain-timeout 0s: it drains before its SIGTERM, so what is left then is
// cancelled at once. A control plane that is not reachable does not stop it: each new
// stream then fails with UNAVAILABLE. Bad flags or TLS files exit 2 with one
// line naming the flag; a --listen address that cannot be bound exits 3 after
// the line "LISTEN_FAILED <reason>" on stdout. Rotated TLS files are picked up for new connections
// (server.LoadTLS).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/voxmesh/voxmesh/dataplane/relay"
	"github.com/voxmesh/voxmesh/dataplane/server"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, signals))
}

// flags are the command line.
type flags struct {
	listen, control, forward     string
	tlsCert, tlsKey, tlsClientCA string
	drainTimeout, idleTimeout    time.Duration
	controlTimeout, instanceIdle time.Duration
	controlBatchWait             time.Duration
	maxMessageBytes              int
	writeBuffer, readBuffer      int
	sharedWriteBuffer            bool
	streamWorkers                uint
	cpuProfile                   string
	exitOnStdinEOF               bool
}

func parse(args []string, stderr io.Writer) (flags, error) {
	var f flags
	fs := flag.NewFlagSet("voxmesh-dataplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.listen, "listen", "127.0.0.1:0", "public endpoint, host:port (port 0: any)")
	fs.StringVar(&f.control, "control", "", "the control plane's Connect, unix:/path (required)")
	fs.StringVar(&f.forward, "forward", "", "where every other method goes, unix:/path (required)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate: serve TLS (with --tls-key)")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&f.tlsClientCA, "tls-client-ca", "", "PEM CA bundle: require client certificates (mutual TLS)")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", 30*time.Second, "time calls under way get to end on SIGTERM")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", 30*time.Second, "longest wait for a client's first request (the router's idle timeout)")
	fs.DurationVar(&f.controlTimeout, "control-timeout", 5*time.Second, "longest wait for the control plane to end a stream's call")
	fs.DurationVar(&f.controlBatchWait, "control-batch-wait", relay.DefaultControlBatchWait,
		"after sending the control plane a batch of events, how long to gather the next one (0: send each at once)")
	fs.DurationVar(&f.instanceIdle, "instance-idle", time.Minute, "how long an unused connection to an instance stays open")
	fs.IntVar(&f.maxMessageBytes, "max-message-bytes", server.DefaultMaxMessageBytes, "largest gRPC message taken or sent")
	fs.IntVar(&f.writeBuffer, "grpc-write-buffer", 0, "bytes of each connection's write buffer (0: grpc-go's default)")
	fs.IntVar(&f.readBuffer, "grpc-read-buffer", 0, "bytes of each connection's read buffer (0: grpc-go's default)")
	fs.BoolVar(&f.sharedWriteBuffer, "grpc-shared-write-buffer", false, "release write buffers between writes")
	fs.UintVar(&f.streamWorkers, "grpc-stream-workers", 0, "serve calls on this many worker goroutines (0: a goroutine per call)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile to this file until exit")
	fs.BoolVar(&f.exitOnStdinEOF, "exit-on-stdin-eof", false,
		"drain and exit when stdin ends (the router holds it open while it runs, so EOF means it died)")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	switch {
	case fs.NArg() > 0:
		return f, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case f.control == "":
		return f, fmt.Errorf("--control is required")
	case f.forward == "":
		return f, fmt.Errorf("--forward is required")
	case f.drainTimeout < 0:
		return f, fmt.Errorf("--drain-timeout %s is negative", f.drainTimeout)
	case f.idleTimeout <= 0:
		return f, fmt.Errorf("--idle-timeout %s must be positive", f.idleTimeout)
	case f.controlTimeout <= 0:
		return f, fmt.Errorf("--control-timeout %s must be positive", f.controlTimeout)
	case f.controlBatchWait < 0:
		return f, fmt.Errorf("--control-batch-wait %s is negative", f.controlBatchWait)
	case f.instanceIdle <= 0:
		return f, fmt.Errorf("--instance-idle %s must be positive", f.instanceIdle)
	case f.maxMessageBytes <= 0:
		return f, fmt.Errorf("--max-message-bytes %d must be positive", f.maxMessageBytes)
	case f.writeBuffer < 0 || f.readBuffer < 0:
		return f, fmt.Errorf("--grpc-write-buffer and --grpc-read-buffer must not be negative")
	}
	return f, nil
}

// exitListenFailed is the exit code when the public endpoint cannot be bound;
// the line "LISTEN_FAILED <reason>" on stdout says why.
const exitListenFailed = 3

// listenFailedPrefix starts the stdout line that gives the reason.
const listenFailedPrefix = "LISTEN_FAILED "

// stdin is where the router's pipe is read (a variable for tests).
var stdin io.Reader = os.Stdin

// parentGone is closed once stdin ends, when watch is set; never otherwise.
func parentGone(watch bool) <-chan struct{} {
	gone := make(chan struct{})
	if watch {
		go func() {
			_, _ = io.Copy(io.Discard, stdin)
			close(gone)
		}()
	}
	return gone
}

// run is the command: it returns the exit code.
func run(args []string, stdout, stderr io.Writer, signals <-chan os.Signal) int {
	logger := slog.New(slog.NewTextHandler(stderr, nil)).With("component", "voxmesh-dataplane")
	f, err := parse(args, stderr)
	if err != nil {
		if err != flag.ErrHelp {
			fmt.Fprintln(stderr, "voxmesh-dataplane:", err)
		}
		return 2
	}
	creds, err := server.LoadTLS(f.tlsCert, f.tlsKey, f.tlsClientCA, logger)
	if err != nil {
		fmt.Fprintln(stderr, "voxmesh-dataplane:", err)
		return 2
	}
	if f.cpuProfile != "" {
		out, err := os.Create(f.cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "voxmesh-dataplane: --cpuprofile:", err)
			return 2
		}
		defer out.Close()
		if err := pprof.StartCPUProfile(out); err != nil {
			fmt.Fprintln(stderr, "voxmesh-dataplane: --cpuprofile:", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	srv, err := server.New(server.Options{
		Listen:           f.listen,
		Control:          f.control,
		Forward:          f.forward,
		TLS:              creds,
		IdleTimeout:      f.idleTimeout,
		ControlTimeout:   f.controlTimeout,
		ControlBatchWait: f.controlBatchWait,
		InstanceIdle:     f.instanceIdle,
		MaxMessageBytes:  f.maxMessageBytes,
		Tuning: server.Tuning{
			WriteBufferBytes:  f.writeBuffer,
			ReadBufferBytes:   f.readBuffer,
			SharedWriteBuffer: f.sharedWriteBuffer,
			StreamWorkers:     uint32(f.streamWorkers),
		},
		Logger: logger,
	})
	var listenErr *server.ListenError
	if errors.As(err, &listenErr) {
		// On stdout, where the router reads PORT: it names its own setting in the error.
		fmt.Fprintf(stdout, "%s%v\n", listenFailedPrefix, listenErr.Err)
		return exitListenFailed
	}
	if err != nil {
		fmt.Fprintln(stderr, "voxmesh-dataplane:", err)
		return 2
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	fmt.Fprintf(stdout, "PORT %d\n", srv.Port())
	logger.Info("serving", "port", srv.Port(), "tls", creds != nil, "mutual_tls", f.tlsClientCA != "")
	select {
	case err := <-served:
		logger.Error("serving failed", "err", err)
		srv.Shutdown(0)
		return 1
	case sig := <-signals:
		logger.Info("draining", "signal", sig.String(), "drain_timeout", f.drainTimeout)
	case <-parentGone(f.exitOnStdinEOF):
		logger.Warn("stdin ended: the router that started this data path is gone; draining",
			"drain_timeout", f.drainTimeout)
	}
	if !srv.Shutdown(f.drainTimeout) {
		logger.Warn("calls still under way at the end of the drain were cancelled")
	}
	<-served
	logger.Info("stopped")
	return 0
}
