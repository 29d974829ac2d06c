package failover_test

import (
	"bytes"
	"runtime"
	"strings"
	"testing"

	"github.com/voxmesh/voxmesh/dataplane/failover"
)

func newLog(t *testing.T, cfg failover.ReplayConfig) *failover.ReplayLog {
	t.Helper()
	log, err := failover.NewReplayLog(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return log
}

// drain returns everything the current instance has still to be sent.
func drain(log *failover.ReplayLog) []byte {
	var out []byte
	for {
		audio, ok := log.Next()
		if !ok {
			return out
		}
		out = append(out, audio...)
	}
}

// contextOf returns the lead-in of log's resume metadata ("" without one).
func contextOf(log *failover.ReplayLog) string {
	for _, p := range log.ResumeMetadata() {
		if p.Key == failover.ContextKey {
			return p.Value
		}
	}
	return ""
}

func TestLinear16NeedsASampleRate(t *testing.T) {
	if _, err := failover.NewReplayLog(failover.ReplayConfig{Linear16: true}); err == nil {
		t.Error("a LINEAR16 log without a sample rate was made")
	}
	if _, err := failover.NewReplayLog(failover.ReplayConfig{}); err != nil {
		t.Errorf("a container needs no sample rate: %v", err)
	}
}

// An empty chunk not yet sent when a final ends where the sent audio ends is dropped
// with the audio before it; the cursor stays on what follows. (Python's log moves its
// cursor to -1 there and then sends C, nothing, C: B is lost.)
func TestAnEmptyChunkDroppedUnsentLeavesTheCursorInPlace(t *testing.T) {
	log := newLog(t, failover.ReplayConfig{Linear16: true, SampleRate: 16000, ReplayMaxBytes: 1 << 20})
	log.Append(bytes.Repeat([]byte("A"), 3200))
	drain(log)
	log.Append(nil)
	log.Commit(100, 0, "") // ends at byte 3200, where the sent audio ends
	b, c := bytes.Repeat([]byte("B"), 3200), bytes.Repeat([]byte("C"), 3200)
	log.Append(b)
	log.Append(c)
	if got, want := drain(log), append(append([]byte{}, b...), c...); !bytes.Equal(got, want) {
		t.Errorf("sent %q..., want B then C", got[:min(len(got), 8)])
	}
}

// An empty chunk counts nothing against any bound, so the log must not keep it:
// one goes to the instance while nothing else waits (its idle timer restarts), and
// is gone once sent; one that finds something waiting is dropped at once.
func TestEmptyChunksHoldNoMemory(t *testing.T) {
	for _, linear16 := range []bool{true, false} {
		log := newLog(t, failover.ReplayConfig{Linear16: linear16, SampleRate: 16000, ReplayMaxBytes: 1 << 20})
		const n = 200_000
		empty := []byte{0x12, 0x00} // the request of an empty chunk
		chunk := bytes.Repeat([]byte("A"), 3200)
		log.Append(chunk)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range n { // the instance reads nothing meanwhile: the chunk waits
			log.AppendRequest(nil, empty)
		}
		if got := drain(log); !bytes.Equal(got, chunk) {
			t.Errorf("linear16 %v: sent %d bytes, not the chunk alone", linear16, len(got))
		}
		sent := 0
		for range n { // the instance reads each at once
			log.AppendRequest(nil, empty)
			if audio, request, ok := log.NextRequest(); !ok || len(audio) != 0 || !bytes.Equal(request, empty) {
				t.Fatalf("linear16 %v: the empty chunk was not sent as it came", linear16)
			}
			sent++
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 1<<20 {
			t.Errorf("linear16 %v: %d empty chunks grew the heap by %d bytes", linear16, 2*n, grew)
		}
		if !log.Restart() {
			t.Fatal("not replayable")
		}
		if got := drain(log); !bytes.Equal(got, chunk) {
			t.Errorf("linear16 %v: replayed %d bytes, not the chunk alone", linear16, len(got))
		}
		runtime.KeepAlive(log)
	}
}

// After a final that covers everything sent, an empty chunk the instance has not
// had is still sent to the next one.
func TestAnEmptyChunkAtTheResumePointIsSentAfterARestart(t *testing.T) {
	log := newLog(t, failover.ReplayConfig{Linear16: true, SampleRate: 16000, ReplayMaxBytes: 1 << 20})
	log.Append(bytes.Repeat([]byte("A"), 3200))
	drain(log)
	log.Commit(100, 0, "")
	log.Append(nil)
	if !log.Restart() {
		t.Fatal("not replayable")
	}
	if audio, ok := log.Next(); !ok || len(audio) != 0 {
		t.Errorf("Next = %q, %v; want the empty chunk", audio, ok)
	}
	if _, ok := log.Next(); ok {
		t.Error("more to send")
	}
}

// The vectors never reach MaxContextFinals or PromptWords: this is
// test_the_lead_in_names_at_most_the_latest_finals_an_instance_takes (Python) with
// the prompt checked too.
func TestTheLeadInNamesAtMostTheLatestFinals(t *testing.T) {
	for _, linear16 := range []bool{true, false} {
		cfg := failover.ReplayConfig{Linear16: linear16, ReplayMaxBytes: 1 << 30, ContextMs: 29000}
		if linear16 {
			cfg.SampleRate = 16000
		}
		log := newLog(t, cfg)
		for i := 0; i < 300; i++ { // 30 s
			log.Append(make([]byte, 3200))
		}
		drain(log)
		words := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i"} // 9 words a final
		for i := 0; i < failover.MaxContextFinals+6; i++ {             // short utterances 0.42 s apart
			log.Commit(float64(1320+420*i), float64(1000+420*i), strings.Join(words, " "))
		}
		if !log.Restart() {
			t.Fatal("not replayable")
		}
		context := contextOf(log)
		if n := strings.Count(context, "],["); n+1 != failover.MaxContextFinals {
			t.Errorf("linear16=%v: %d finals in the lead-in, want %d", linear16, n+1, failover.MaxContextFinals)
		}
		// Six finals left for the prompt (54 words): it keeps the last PromptWords.
		prompt := strings.Repeat(" "+strings.Join(words, " "), 6)
		prompt = strings.Join(strings.Fields(prompt)[54-failover.PromptWords:], " ")
		if !strings.HasSuffix(context, `,"prompt":"`+prompt+`"}`) {
			t.Errorf("linear16=%v: lead-in %s..., want the prompt %q", linear16, context[:40], prompt)
		}
	}
}

func TestARequestKeptWithItsChunkComesBackOnlyWithTheWholeChunk(t *testing.T) {
	log := newLog(t, failover.ReplayConfig{Linear16: true, SampleRate: 16000, ReplayMaxBytes: 1 << 20})
	chunks := [][]byte{bytes.Repeat([]byte{1}, 3200), bytes.Repeat([]byte{2}, 3200)}
	requests := [][]byte{[]byte("request 1"), []byte("request 2")}
	log.AppendRequest(chunks[0], requests[0])
	log.AppendRequest(chunks[1], requests[1])
	log.Append([]byte{3, 3}) // none kept
	for i, want := range [][]byte{requests[0], requests[1], nil} {
		if _, request, ok := log.NextRequest(); !ok || !bytes.Equal(request, want) {
			t.Errorf("chunk %d: request %q", i, request)
		}
	}
	log.Commit(150, 0, "") // the resume point: 50 ms into the second chunk
	log.Restart()
	if audio, request, _ := log.NextRequest(); len(audio) != 1600 || request != nil {
		t.Errorf("a cut chunk came with request %q (%d bytes of audio)", request, len(audio))
	}
}
