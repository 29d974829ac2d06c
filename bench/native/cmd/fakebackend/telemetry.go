package main

import (
	"runtime"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
)

const (
	defaultTelemetryInterval = time.Second
	minTelemetryInterval     = 100 * time.Millisecond
)

// WatchTelemetry sends one snapshot now and one per interval (1 s unset).
func (b *backend) WatchTelemetry(req *sttv1.WatchTelemetryRequest, stream sttv1.TelemetryService_WatchTelemetryServer) error {
	interval := defaultTelemetryInterval
	if req.Interval != nil {
		if interval = req.Interval.AsDuration(); interval < minTelemetryInterval {
			return status.Error(codes.InvalidArgument, "interval below 0.1 s")
		}
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		if err := stream.Send(&sttv1.WatchTelemetryResponse{Snapshot: b.snapshot()}); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-ticker.C:
		}
	}
}

// snapshot is the double's telemetry, with the fields the Python double fills.
func (b *backend) snapshot() *sttv1.TelemetrySnapshot {
	b.mu.Lock()
	active, draining, drainEnds := b.active, b.draining, b.drainEnds
	b.mu.Unlock()
	snap := &sttv1.TelemetrySnapshot{
		InstanceId:           b.opts.instanceID,
		Role:                 sttv1.Role_ROLE_ASR,
		Model:                b.opts.model,
		Pool:                 b.opts.pool,
		CapacityClass:        capacityClass,
		Region:               region,
		GpuType:              gpuType,
		State:                sttv1.ServingState_SERVING_STATE_SERVING,
		ActiveStreams:        int32(active),
		MaxStreams:           int32(b.opts.maxStreams),
		GpuAvailable:         false,
		GpuUnavailableReason: "fake instance: no GPU",
		Host:                 &sttv1.HostStats{CpuCount: int32(runtime.NumCPU())},
		Time:                 timestamppb.Now(),
		Uptime:               durationpb.New(time.Since(b.started)),
	}
	if draining {
		snap.State = sttv1.ServingState_SERVING_STATE_DRAINING
		snap.DrainRemaining = durationpb.New(max(0, time.Until(drainEnds)).Round(time.Millisecond))
	}
	return snap
}
