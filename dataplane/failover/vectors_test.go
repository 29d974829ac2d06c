package failover_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/voxmesh/voxmesh/dataplane/failover"
)

// The vectors the Python implementation answered (tests/vectors/failover.py says
// how each op maps to its API). Another file the generator made can be given:
// go test ./dataplane/failover -args -vectors=/tmp/more.json
var vectorsPath = flag.String("vectors", filepath.Join("..", "..", "tests", "vectors", "failover.json"),
	"the failover vectors to replay")

type vectors struct {
	ReplayLog     []logCase     `json:"replay_log"`
	ResultTracker []trackerCase `json:"result_tracker"`
}

type logCase struct {
	Linear16       bool       `json:"linear16"`
	SampleRate     int64      `json:"sample_rate"`
	ReplayMaxBytes int64      `json:"replay_max_bytes"`
	ContextMs      int64      `json:"context_ms"`
	Ops            []vectorOp `json:"ops"`
}

type trackerCase struct {
	Ops []vectorOp `json:"ops"`
}

// vectorOp is any op of either kind of case; Expect is decoded by op.
type vectorOp struct {
	Op       string          `json:"op"`
	N        int             `json:"n"`
	EndMs    float64         `json:"end_ms"`
	StartMs  float64         `json:"start_ms"`
	Text     string          `json:"text"`
	Resumed  bool            `json:"resumed"`
	Index    int32           `json:"index"`
	Final    bool            `json:"final"`
	Type     string          `json:"type"`
	OffsetMs float64         `json:"offset_ms"`
	Expect   json.RawMessage `json:"expect"`
}

type chunkAnswer struct {
	N     int    `json:"n"`
	CRC32 uint32 `json:"crc32"`
}

type stateAnswer struct {
	Unsent     int64 `json:"unsent"`
	Total      int64 `json:"total"`
	Pending    bool  `json:"pending"`
	Replayable bool  `json:"replayable"`
	AudioMs    int64 `json:"audio_ms"`
}

type summaryAnswer struct {
	FinalResults int `json:"final_results"`
	Failovers    int `json:"failovers"`
}

func loadVectors(t *testing.T) vectors {
	t.Helper()
	raw, err := os.ReadFile(*vectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields() // a new field in the generator needs a new rule here
	var v vectors
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", *vectorsPath, err)
	}
	if len(v.ReplayLog) == 0 || len(v.ResultTracker) == 0 {
		t.Fatalf("%s: no cases", *vectorsPath)
	}
	return v
}

// streamAudio is the test audio: the byte at stream position p is p % 251.
func streamAudio(start int64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((start + int64(i)) % 251)
	}
	return b
}

// durationMs is what the tracker gets for an offset of ms in a vector: the ms as a
// protobuf Duration (nanoseconds rounded half to even, as Python's round), then
// read back as the Python router reads it.
func durationMs(ms float64) float64 {
	n := int64(math.RoundToEven(ms * 1e6))
	return failover.DurationMs(n/1e9, int32(n%1e9)) // truncated: nanos take the sign of seconds
}

func TestVectorsReplayLog(t *testing.T) {
	for i, c := range loadVectors(t).ReplayLog {
		if err := runLogCase(c); err != nil {
			t.Errorf("replay_log case %d: %v", i, err)
		}
	}
}

// runLogCase runs c's ops; the error names the first op answered otherwise.
func runLogCase(c logCase) error {
	log, err := failover.NewReplayLog(failover.ReplayConfig{
		Linear16:       c.Linear16,
		SampleRate:     c.SampleRate,
		ReplayMaxBytes: c.ReplayMaxBytes,
		ContextMs:      c.ContextMs,
	})
	if err != nil {
		return err
	}
	for j, op := range c.Ops {
		var got, want any
		switch op.Op {
		case "append":
			log.Append(streamAudio(log.TotalBytes(), op.N))
			continue
		case "commit":
			log.Commit(op.EndMs, op.StartMs, op.Text)
			continue
		case "half_close":
			log.HalfClosed = true
			continue
		case "next":
			var answer *chunkAnswer
			if audio, ok := log.Next(); ok {
				answer = &chunkAnswer{len(audio), crc32.ChecksumIEEE(audio)}
			}
			got, want = answer, new(*chunkAnswer)
		case "restart":
			got, want = log.Restart(), new(bool)
		case "metadata":
			pairs := [][2]string{}
			for _, p := range log.ResumeMetadata() {
				pairs = append(pairs, [2]string{p.Key, p.Value})
			}
			got, want = pairs, new([][2]string)
		case "state":
			got = stateAnswer{
				Unsent:     log.UnsentBytes(),
				Total:      log.TotalBytes(),
				Pending:    log.Pending(),
				Replayable: log.Replayable(),
				AudioMs:    int64(log.AudioSeconds() * 1000),
			}
			want = new(stateAnswer)
		default:
			return fmt.Errorf("op %d: unknown op %q", j, op.Op)
		}
		if err := expect(op, got, want); err != nil {
			return fmt.Errorf("op %d: %w", j, err)
		}
	}
	return nil
}

func TestVectorsResultTracker(t *testing.T) {
	for i, c := range loadVectors(t).ResultTracker {
		if err := runTrackerCase(c); err != nil {
			t.Errorf("result_tracker case %d: %v", i, err)
		}
	}
}

// runTrackerCase runs c's ops; the error names the first op answered otherwise.
func runTrackerCase(c trackerCase) error {
	tracker := failover.NewResultTracker()
	for j, op := range c.Ops {
		var got, want any
		switch op.Op {
		case "begin":
			tracker.BeginAttempt(op.Resumed)
			continue
		case "failover":
			tracker.Failover()
			continue
		case "result":
			var answer *int32
			if index, send := tracker.OnResult(op.Index, op.Final, durationMs(op.EndMs)); send {
				answer = &index
			}
			got, want = answer, new(*int32)
		case "event":
			if op.Type != "started" && op.Type != "ended" {
				return fmt.Errorf("op %d: unknown event type %q", j, op.Type)
			}
			got = tracker.OnSpeechEvent(op.Type == "started", durationMs(op.OffsetMs))
			want = new(bool)
		case "summary":
			got = summaryAnswer{tracker.FinalResults(), tracker.Failovers()}
			want = new(summaryAnswer)
		default:
			return fmt.Errorf("op %d: unknown op %q", j, op.Op)
		}
		if err := expect(op, got, want); err != nil {
			return fmt.Errorf("op %d: %w", j, err)
		}
	}
	return nil
}

// expect decodes op's expected answer into want (a pointer) and compares got with it.
func expect(op vectorOp, got, want any) error {
	if len(op.Expect) == 0 {
		return fmt.Errorf("%s: no expected answer", op.Op)
	}
	if err := json.Unmarshal(op.Expect, want); err != nil {
		return fmt.Errorf("%s: expected answer %s: %v", op.Op, op.Expect, err)
	}
	w := reflect.ValueOf(want).Elem().Interface()
	if !reflect.DeepEqual(got, w) {
		return fmt.Errorf("%s: got %s, want %s", op.Op, show(got), op.Expect)
	}
	return nil
}

// show writes v as the vectors do (no HTML escapes), for a readable difference.
func show(v any) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Sprint(v)
	}
	return string(bytes.TrimSuffix(b.Bytes(), []byte("\n")))
}
