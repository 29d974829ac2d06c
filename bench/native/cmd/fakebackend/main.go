// Command fakebackend is a benchmark double of an ASR instance in Go: the
// behaviour of tests/doubles/fake_asr.py that bench/router_overhead.py relies
// on, with no model and at a fraction of its CPU, so that a benchmark at
// hundreds of streams measures the proxy in front of it and not the double.
//
// It serves RecognizerService.StreamingRecognize (config first; utterances of
// --utterance-ms stream time, each closed by a final result; with interim
// results on, one interim result per --interim-every chunks; at the client's
// half-close the closing final and the summary), TelemetryService.WatchTelemetry
// (the load a router reads) and grpc.health.v1 (SERVING), and registers in a
// file registry (--registry-dir) the way FileRegistrar does. Recognize, server
// reflection, failover metadata and the test controls of the Python double are
// left out.
//
//	voxmesh-fakebackend --port 0 --instance-id a --max-streams 8 --registry-dir DIR
//
// prints "PORT <n>" once serving; on SIGTERM or SIGINT it drains (draining
// record, NOT_SERVING, new streams refused; active ones finish within
// --drain-timeout), deregisters and exits 0.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// What the double reports about its machine, the Python double's defaults.
const (
	capacityClass = "on-demand"
	region        = "local"
	gpuType       = "cpu"
)

// maxMessageBytes is the voxmesh services' gRPC message limit.
const maxMessageBytes = 20 * 1024 * 1024

// options are the command line flags, a subset of the Python double's.
type options struct {
	host         string
	port         int
	instanceID   string
	pool         string
	model        string
	maxStreams   int
	utteranceMs  int64
	interimEvery int
	registryDir  string
	drainTimeout time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.host, "host", "127.0.0.1", "interface to bind")
	flag.IntVar(&o.port, "port", 0, "gRPC port (0: any)")
	flag.StringVar(&o.instanceID, "instance-id", fmt.Sprintf("fake-%d", os.Getpid()), "instance id")
	flag.StringVar(&o.pool, "pool", "asr_small", "pool it serves")
	flag.StringVar(&o.model, "model", "tiny.en", "model it claims to serve")
	flag.IntVar(&o.maxStreams, "max-streams", 8, "admission limit")
	flag.Int64Var(&o.utteranceMs, "utterance-ms", 1000, "stream time per utterance (one final each), ms")
	flag.IntVar(&o.interimEvery, "interim-every", 1, "chunks per interim result")
	flag.StringVar(&o.registryDir, "registry-dir", "", "register in this file registry")
	flag.DurationVar(&o.drainTimeout, "drain-timeout", 30*time.Second, "longest drain on SIGTERM")
	flag.Parse()
	if o.utteranceMs < 10 || o.interimEvery < 1 || o.maxStreams < 0 {
		fmt.Fprintln(os.Stderr, "fakebackend: --utterance-ms must be at least 10, --interim-every positive, --max-streams not negative")
		os.Exit(2)
	}
	if err := serve(o); err != nil {
		logf("%v", err)
		os.Exit(1)
	}
}

// serve runs the double until SIGTERM or SIGINT, then drains.
func serve(o options) error {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	lis, err := net.Listen("tcp", net.JoinHostPort(o.host, strconv.Itoa(o.port)))
	if err != nil {
		return err
	}
	port := lis.Addr().(*net.TCPAddr).Port
	b := &backend{opts: o, started: time.Now()}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(maxMessageBytes), grpc.MaxSendMsgSize(maxMessageBytes))
	sttv1.RegisterRecognizerServiceServer(srv, b)
	sttv1.RegisterTelemetryServiceServer(srv, b)
	healthy := health.NewServer()
	for _, name := range []string{"", sttv1.RecognizerService_ServiceDesc.ServiceName, sttv1.TelemetryService_ServiceDesc.ServiceName} {
		healthy.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(srv, healthy)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()

	var reg *registrar
	if o.registryDir != "" {
		if reg, err = register(o.registryDir, record{
			InstanceID: o.instanceID, Pool: o.pool, Model: o.model, Address: o.host, Port: port,
			CapacityClass: capacityClass, GPUType: gpuType, Region: region, MaxStreams: o.maxStreams,
			Meta: map[string]string{},
		}); err != nil {
			srv.Stop()
			return err
		}
	}
	fmt.Printf("PORT %d\n", port)

	select {
	case err := <-served:
		return err
	case <-signals:
	}
	if reg != nil {
		if err := reg.setDraining(); err != nil {
			logf("registry: %v", err)
		}
	}
	healthy.Shutdown()
	b.drain(o.drainTimeout)
	srv.Stop()
	if reg != nil {
		return reg.deregister()
	}
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "fakebackend: "+format+"\n", args...)
}
