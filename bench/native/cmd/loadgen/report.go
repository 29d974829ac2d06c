package main

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"time"
)

// result is the JSON line, with the keys, order and meanings of bench/loadgen.py.
type result struct {
	Target         string         `json:"target"`
	Streams        int            `json:"streams"`
	ChunkMs        int            `json:"chunk_ms"`
	InterimEvery   int            `json:"interim_every"`
	WindowS        float64        `json:"window_s"`
	StreamsOK      int            `json:"streams_ok"`
	StreamErrors   map[string]int `json:"stream_errors"`
	ChunksExpected int            `json:"chunks_expected"`
	ChunksSent     int            `json:"chunks_sent"`
	ResponsesTimed int            `json:"responses_timed"`
	LatencyMs      latency        `json:"latency_ms"`
	SendLagMs      sendLag        `json:"send_lag_ms"`
	FirstResponse  firstResponse  `json:"first_response_ms"`
	LoadgenCPUS    float64        `json:"loadgen_cpu_s"`
}

type latency struct {
	P50 maybeNaN `json:"p50"`
	P90 maybeNaN `json:"p90"`
	P99 maybeNaN `json:"p99"`
	Max maybeNaN `json:"max"`
}

type firstResponse struct {
	P50 maybeNaN `json:"p50"`
	P99 maybeNaN `json:"p99"`
	Max maybeNaN `json:"max"`
}

type sendLag struct {
	P50 maybeNaN `json:"p50"`
	P99 maybeNaN `json:"p99"`
}

// maybeNaN is a figure that is NaN when there was nothing to measure. JSON has
// no NaN and encoding/json refuses one, so it is written as a placeholder
// string that report turns into the bare NaN Python's json module writes and
// reads.
type maybeNaN float64

const nanPlaceholder = `"NaN-placeholder"`

// MarshalJSON writes the number, or the placeholder for NaN.
func (x maybeNaN) MarshalJSON() ([]byte, error) {
	if math.IsNaN(float64(x)) {
		return []byte(nanPlaceholder), nil
	}
	return json.Marshal(float64(x))
}

// report merges the streams' figures into the JSON line.
func report(o options, all []figures, cpuS float64) ([]byte, error) {
	r := result{Target: o.target, Streams: o.streams, ChunkMs: o.chunkMs, InterimEvery: o.interimEvery,
		WindowS: o.duration, StreamErrors: map[string]int{}, LoadgenCPUS: cpuS,
		ChunksExpected: int(math.RoundToEven(float64(o.streams) * o.duration * 1000 / float64(o.chunkMs)))}
	var latencies, lags, firsts []float64
	for _, f := range all {
		if f.gotFirst {
			firsts = appendMs(firsts, []time.Duration{f.firstResp})
		}
		if f.err == "" {
			r.StreamsOK++
		} else {
			r.StreamErrors[f.err]++
		}
		r.ChunksSent += f.sent
		r.ResponsesTimed += f.received
		latencies = appendMs(latencies, f.latencies)
		lags = appendMs(lags, f.sendLags)
	}
	slices.Sort(latencies)
	slices.Sort(lags)
	r.LatencyMs = latency{percentile(latencies, 50), percentile(latencies, 90), percentile(latencies, 99),
		percentile(latencies, 100)}
	r.SendLagMs = sendLag{percentile(lags, 50), percentile(lags, 99)}
	slices.Sort(firsts)
	r.FirstResponse = firstResponse{percentile(firsts, 50), percentile(firsts, 99), percentile(firsts, 100)}
	line, err := json.Marshal(r)
	return bytes.ReplaceAll(line, []byte(nanPlaceholder), []byte("NaN")), err
}

func appendMs(ms []float64, ds []time.Duration) []float64 {
	for _, d := range ds {
		ms = append(ms, float64(d)/float64(time.Millisecond))
	}
	return ms
}

// percentile is bench.common.percentile: nearest rank of sorted values, NaN for none.
func percentile(sorted []float64, q float64) maybeNaN {
	if len(sorted) == 0 {
		return maybeNaN(math.NaN())
	}
	rank := max(1, int(math.Ceil(q/100*float64(len(sorted)))))
	return maybeNaN(sorted[rank-1])
}
