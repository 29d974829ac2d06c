// Command benchcontrol is a benchmark double of the router's control plane, not
// the control plane: controldouble serving DataPlaneService.Attach on a Unix
// socket, routing every stream to --pool with the router's default limits and
// placing every attempt on the one --target, so that voxmesh-dataplane can be
// measured alone in front of a backend (voxmesh-fakebackend):
//
//	benchcontrol --socket /tmp/control.sock --target 127.0.0.1:50051
//
// prints "READY" once serving; stops on SIGTERM or SIGINT.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/voxmesh/voxmesh/dataplane/internal/controldouble"
	routerv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/router/v1"
)

func main() {
	socket := flag.String("socket", "", "Unix socket to serve Attach on (required)")
	target := flag.String("target", "", "host:port every stream is placed on (required)")
	instanceID := flag.String("instance-id", "b", "instance id of the placements")
	model := flag.String("model", "tiny.en", "model of the placements")
	flag.Parse()
	if *socket == "" || *target == "" {
		fmt.Fprintln(os.Stderr, "benchcontrol: --socket and --target are required")
		os.Exit(2)
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	placement := &routerv1.PlacementEvent{InstanceId: *instanceID, Target: *target, Model: *model}
	double := &controldouble.Double{
		Place: func(*controldouble.Stream, int) (*routerv1.PlacementEvent, error) { return placement, nil },
	}
	go func() { // nobody reads the recorded streams
		for range double.Streams() {
		}
	}()
	_ = os.Remove(*socket)
	stop, err := double.Serve(*socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchcontrol:", err)
		os.Exit(1)
	}
	fmt.Println("READY")
	<-signals
	stop()
}
