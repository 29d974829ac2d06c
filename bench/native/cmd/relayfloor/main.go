// Command relayfloor is bench/grpc_relay_floor.py in Go: the least a grpc-go
// proxy does per message, a reference point for the router next to the
// grpc.aio floor.
//
// Every call on any method is opened as a bidirectional stream on --backend
// with the same method and relayed both ways; the messages stay raw bytes (no
// protobuf parsing) and there is no routing, admission, audio buffering,
// failover or metrics. Like the Python floor it forwards no metadata.
//
//	voxmesh-relayfloor --backend 127.0.0.1:50051 [--port 0]
//
// prints "PORT <n>" once serving; stops on SIGTERM or SIGINT.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/voxmesh/voxmesh/internal/rawcodec"
)

var relayDesc = grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

func main() {
	backend := flag.String("backend", "", "host:port of the backend (required)")
	port := flag.Int("port", 0, "port to listen on (0: any)")
	flag.Parse()
	if *backend == "" {
		fmt.Fprintln(os.Stderr, "relayfloor: --backend is required")
		os.Exit(2)
	}
	if err := serve(*backend, *port); err != nil {
		fmt.Fprintln(os.Stderr, "relayfloor:", err)
		os.Exit(1)
	}
}

// serve relays to backend until SIGTERM or SIGINT.
func serve(backend string, port int) error {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	conn, err := grpc.Dial(backend, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawcodec.Codec{})))
	if err != nil {
		return err
	}
	defer conn.Close()
	lis, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawcodec.Codec{}),
		grpc.UnknownServiceHandler(func(_ any, down grpc.ServerStream) error { return relay(conn, down) }))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	fmt.Printf("PORT %d\n", lis.Addr().(*net.TCPAddr).Port)
	select {
	case err := <-served:
		return err
	case <-signals:
	}
	srv.Stop()
	return nil
}

// relay opens the call's method on conn and copies messages both ways until
// the backend ends the call; its status is the call's.
func relay(conn *grpc.ClientConn, down grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(down)
	ctx, cancel := context.WithCancel(down.Context())
	defer cancel()
	up, err := conn.NewStream(ctx, &relayDesc, method)
	if err != nil {
		return err
	}
	go func() {
		var msg []byte
		for {
			if down.RecvMsg(&msg) != nil { // io.EOF: the client half-closed
				up.CloseSend()
				return
			}
			if up.SendMsg(&msg) != nil {
				return
			}
		}
	}()
	var msg []byte
	for {
		if err := up.RecvMsg(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := down.SendMsg(&msg); err != nil {
			return err
		}
	}
}
