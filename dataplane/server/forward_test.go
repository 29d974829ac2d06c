package server_test

// Every method but StreamingRecognize goes to the control plane unchanged:
// metadata and deadline one way; headers, messages, trailers and the status
// (details included) the other.

import (
	"context"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/voxmesh/voxmesh/dataplane/internal/controldouble"
	"github.com/voxmesh/voxmesh/dataplane/internal/fakeinstance"
	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

// upstream is a test double of the control plane's public services: it answers
// as the request asks and echoes what it received.
type upstream struct {
	sttv1.UnimplementedRecognizerServiceServer
	sttv1.UnimplementedTelemetryServiceServer
}

// echo sends the header and sets the trailer every answer gets: the metadata
// and the deadline the call arrived with.
func echo(ctx context.Context, setHeader func(metadata.MD) error, setTrailer func(metadata.MD)) error {
	md, _ := metadata.FromIncomingContext(ctx)
	header := metadata.Pairs("x-echo", md.Get("x-client")[0], "x-echo-bin", md.Get("x-client-bin")[0])
	if deadline, ok := ctx.Deadline(); ok {
		header.Set("x-deadline-left", time.Until(deadline).Round(time.Minute).String())
	}
	if err := setHeader(header); err != nil {
		return err
	}
	setTrailer(metadata.Pairs("x-trailer", "t"))
	return nil
}

func (upstream) Recognize(ctx context.Context, req *sttv1.RecognizeRequest) (*sttv1.RecognizeResponse, error) {
	if err := echo(ctx, func(md metadata.MD) error { return grpc.SetHeader(ctx, md) },
		func(md metadata.MD) { _ = grpc.SetTrailer(ctx, md) }); err != nil {
		return nil, err
	}
	if req.GetConfig().GetModel() == "missing" {
		st, _ := status.New(codes.NotFound, "model 'missing' is not served here").
			WithDetails(&errdetails.ResourceInfo{ResourceType: "model", ResourceName: "missing"})
		return nil, st.Err()
	}
	return &sttv1.RecognizeResponse{Summary: &sttv1.StreamSummary{AudioProcessed: durationpb.New(time.Duration(len(req.GetAudioContent())))}}, nil
}

func (upstream) WatchTelemetry(req *sttv1.WatchTelemetryRequest, stream sttv1.TelemetryService_WatchTelemetryServer) error {
	if err := echo(stream.Context(), stream.SendHeader, stream.SetTrailer); err != nil {
		return err
	}
	for i := 0; i < 3; i++ {
		if err := stream.Send(&sttv1.WatchTelemetryResponse{Snapshot: &sttv1.TelemetrySnapshot{InstanceId: "router", ActiveStreams: int32(i)}}); err != nil {
			return err
		}
	}
	st, _ := status.New(codes.PermissionDenied, "enough").
		WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})
	return st.Err()
}

func forwardTo(srv *grpc.Server) {
	sttv1.RegisterRecognizerServiceServer(srv, upstream{})
	sttv1.RegisterTelemetryServiceServer(srv, upstream{})
}

func callContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, "x-client", "c", "x-client-bin", "\x00\xffbin")
}

func TestForwardsAUnaryMethodWithMetadataAndStatus(t *testing.T) {
	h := start(t, nil, forwardTo, nil)
	recognizer := sttv1.NewRecognizerServiceClient(h.conn)

	var header, trailer metadata.MD
	resp, err := recognizer.Recognize(callContext(t), &sttv1.RecognizeRequest{AudioContent: make([]byte, 5<<20)},
		grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetSummary().GetAudioProcessed().AsDuration() != 5<<20 {
		t.Errorf("response %v", resp)
	}
	wantHeader := map[string][]string{"x-echo": {"c"}, "x-echo-bin": {"\x00\xffbin"}, "x-deadline-left": {"1h0m0s"}}
	for k, v := range wantHeader {
		if !reflect.DeepEqual(header.Get(k), v) {
			t.Errorf("header %s %q, want %q", k, header.Get(k), v)
		}
	}
	if !reflect.DeepEqual(trailer.Get("x-trailer"), []string{"t"}) {
		t.Errorf("trailer %v", trailer)
	}

	_, err = recognizer.Recognize(callContext(t), &sttv1.RecognizeRequest{Config: &sttv1.RecognitionConfig{Model: "missing"}},
		grpc.Trailer(&trailer))
	st := status.Convert(err)
	if st.Code() != codes.NotFound || st.Message() != "model 'missing' is not served here" || len(st.Details()) != 1 ||
		st.Details()[0].(*errdetails.ResourceInfo).GetResourceName() != "missing" {
		t.Errorf("error %v (details %v)", st, st.Details())
	}
	if !reflect.DeepEqual(trailer.Get("x-trailer"), []string{"t"}) {
		t.Errorf("trailer of the error %v", trailer)
	}
}

func TestForwardsAServerStreamingMethod(t *testing.T) {
	h := start(t, nil, forwardTo, nil)
	call, err := sttv1.NewTelemetryServiceClient(h.conn).WatchTelemetry(callContext(t), &sttv1.WatchTelemetryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	header, err := call.Header()
	if err != nil || !reflect.DeepEqual(header.Get("x-echo"), []string{"c"}) {
		t.Errorf("header %v (%v)", header, err)
	}
	var got []int32
	for {
		r, err := call.Recv()
		if err != nil {
			st := status.Convert(err)
			if st.Code() != codes.PermissionDenied || st.Message() != "enough" || len(st.Details()) != 1 {
				t.Errorf("ended with %v (details %v)", st, st.Details())
			}
			break
		}
		got = append(got, r.GetSnapshot().GetActiveStreams())
	}
	if !reflect.DeepEqual(got, []int32{0, 1, 2}) {
		t.Errorf("snapshots %v", got)
	}
	if !reflect.DeepEqual(call.Trailer().Get("x-trailer"), []string{"t"}) {
		t.Errorf("trailer %v", call.Trailer())
	}
}

func TestForwardsAnUnknownMethodToBeRefusedUpstream(t *testing.T) {
	h := start(t, nil, forwardTo, nil)
	err := h.conn.Invoke(callContext(t), "/voxmesh.nope.v1.Nope/Nope", &sttv1.RecognizeRequest{}, &sttv1.RecognizeResponse{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("unknown method: %v", err)
	}
	// Nothing at the forward socket: the call fails UNAVAILABLE, the data path goes on.
	h = start(t, nil, nil, nil)
	_, err = sttv1.NewRecognizerServiceClient(h.conn).Recognize(callContext(t), &sttv1.RecognizeRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("without upstream: %v", err)
	}
}

func TestAGzipClientIsServedOnEveryMethod(t *testing.T) {
	a := instance(t, "a")
	double := &controldouble.Double{Place: placeOn(a)}
	h := start(t, double, forwardTo, nil)
	// gRPC's older compressor API, which needs no registration: the data path
	// must take gzip of its own (this test's process would register it for
	// both sides otherwise).
	//lint:ignore SA1019 deliberately the API that registers nothing (above)
	gzipped := []grpc.DialOption{grpc.WithCompressor(grpc.NewGZIPCompressor()), grpc.WithDecompressor(grpc.NewGZIPDecompressor())}
	conn, err := grpc.Dial(h.conn.Target(), append(gzipped, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := sttv1.NewRecognizerServiceClient(conn)

	resp, err := client.Recognize(callContext(t), &sttv1.RecognizeRequest{AudioContent: make([]byte, 1000)})
	if err != nil || resp.GetSummary().GetAudioProcessed().AsDuration() != 1000 {
		t.Errorf("Recognize: %v, %v", resp, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call, err := client.StreamingRecognize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	audio := pcm(1500)
	requests := []*sttv1.StreamingRecognizeRequest{{StreamingRequest: &sttv1.StreamingRecognizeRequest_StreamingConfig{
		StreamingConfig: &sttv1.StreamingRecognitionConfig{Config: &sttv1.RecognitionConfig{
			Encoding: sttv1.AudioEncoding_AUDIO_ENCODING_LINEAR16, SampleRateHertz: rate,
			Priority: sttv1.Priority_PRIORITY_REALTIME,
		}}}}}
	for i := 0; i < len(audio); i += chunkBytes {
		requests = append(requests, &sttv1.StreamingRecognizeRequest{StreamingRequest: &sttv1.StreamingRecognizeRequest_AudioContent{
			AudioContent: audio[i:min(i+chunkBytes, len(audio))]}})
	}
	for _, r := range requests {
		if err := call.Send(r); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	_ = call.CloseSend()
	var responses []*sttv1.StreamingRecognizeResponse
	for {
		r, err := call.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("the stream ended with %v", err)
			}
			break
		}
		responses = append(responses, r)
	}
	if texts, _ := finals(responses); !reflect.DeepEqual(texts, fakeinstance.ExpectedFinals(audio, rate, utteranceMs)) {
		t.Errorf("finals %q", texts)
	}
}
