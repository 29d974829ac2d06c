package failover_test

import (
	"testing"

	"github.com/voxmesh/voxmesh/dataplane/failover"
)

func TestDurationMsIsPythons(t *testing.T) {
	for _, c := range []struct {
		seconds int64
		nanos   int32
		want    float64 // duration_ms in Python, bit for bit
	}{
		{1, 500_700_000, 0x1.772cccccccccdp+10},
		{123456789, 987_654_321, 0x1.cbe991de3a782p+36},
		{-1, -500_000_000, -1500},
		{0, 1, 0x1.0c6f7a0b5ed8dp-20},
		{9007199254740, 999_999_999, 0x1.0000000000004p+53},
		// Not the nearest double to 50726.818808 (that ends in ...5b7): two roundings.
		{50, 726_818_808, 0x1.8c4da33acd5b6p+15},
	} {
		if got := failover.DurationMs(c.seconds, c.nanos); got != c.want {
			t.Errorf("DurationMs(%d, %d) = %b, want %b", c.seconds, c.nanos, got, c.want)
		}
	}
}

func TestSummaryAudioRoundsHalfToEvenAsPython(t *testing.T) {
	for _, c := range []struct {
		seconds float64
		nanos   int64 // round(seconds * 1e9) in Python
		ok      bool
	}{
		{1.5e-9, 2, true},
		{2.5e-9, 2, true},
		{0.5e-9, 0, true}, // still set: the instance's figure is replaced by 0
		{3.0000000005, 3_000_000_000, true},
		{0, 0, false}, // a container: the instance's figure stays
	} {
		nanos, ok := failover.SummaryAudioNanos(c.seconds)
		if nanos != c.nanos || ok != c.ok {
			t.Errorf("SummaryAudioNanos(%v) = %d, %v; want %d, %v", c.seconds, nanos, ok, c.nanos, c.ok)
		}
	}
}

// An utterance that ended before its final is not announced twice (Python's
// test_an_utterance_ended_before_its_final_is_not_announced_twice, through the Go API).
func TestARepeatedStartAndItsEndAreDropped(t *testing.T) {
	tracker := failover.NewResultTracker()
	tracker.BeginAttempt(false)
	sent := []bool{tracker.OnSpeechEvent(true, 1000), tracker.OnSpeechEvent(false, 2500)}
	tracker.Failover()
	tracker.BeginAttempt(true)
	sent = append(sent, tracker.OnSpeechEvent(true, 1000), tracker.OnSpeechEvent(false, 2450))
	index, ok := tracker.OnResult(0, true, 2700)
	sent = append(sent, ok, tracker.OnSpeechEvent(true, 3000), tracker.OnSpeechEvent(false, 3600))
	want := []bool{true, true, false, false, true, true, true}
	for i := range want {
		if sent[i] != want[i] {
			t.Fatalf("sent %v, want %v", sent, want)
		}
	}
	if index != 0 || tracker.FinalResults() != 1 || tracker.Failovers() != 1 {
		t.Errorf("index %d, %d finals, %d failovers; want 0, 1, 1", index, tracker.FinalResults(), tracker.Failovers())
	}
}

// A speech start at the very offset of the end the client has had is the next
// utterance, not a repeat: it is announced (as in Python).
func TestAStartWhereTheLastEndWasIsAnnounced(t *testing.T) {
	tracker := failover.NewResultTracker()
	tracker.BeginAttempt(false)
	tracker.OnSpeechEvent(true, 1000)
	tracker.OnSpeechEvent(false, 2500)
	tracker.BeginAttempt(true)
	if !tracker.OnSpeechEvent(true, 2500) {
		t.Error("a start at the last end's offset was dropped as a repeat")
	}
	if !tracker.OnSpeechEvent(false, 3000) {
		t.Error("the end of a new utterance was dropped")
	}
}
