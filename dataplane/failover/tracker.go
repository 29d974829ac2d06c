package failover

import "math"

// ResultTracker makes the responses of successive instances one consistent stream
// for the client: utterance indices continue across instances, interim results of
// utterances already final are dropped, a final is never sent twice, a speech start
// (or end) already announced is not announced again, and the summary counts the
// failovers and the finals the client actually got.
//
// The relay calls [ResultTracker.BeginAttempt] when an instance takes the stream,
// then hands it each result ([ResultTracker.OnResult]) and speech event
// ([ResultTracker.OnSpeechEvent]) of that instance; other responses pass as they
// are. Make one with [NewResultTracker].
type ResultTracker struct {
	finalResults int
	failovers    int
	lastIndex    int64   // the client's index of the last final sent
	lastEndMs    float64 // where that final ends
	base         int64   // the client's index of the current instance's utterance 0
	inSpeech     bool
	ended        bool    // the client has had a speech end without a final after it,
	endedAt      float64 // at this offset
	// A repeat of the speech start (then of its end) the client has had is dropped.
	suppressStart bool
	suppressEnd   bool
}

// NewResultTracker returns a tracker of a stream nothing was sent of yet.
func NewResultTracker() *ResultTracker {
	return &ResultTracker{lastIndex: -1, lastEndMs: -1}
}

// FinalResults returns the final results sent to the client.
func (t *ResultTracker) FinalResults() int { return t.finalResults }

// Failovers returns the times the stream moved to another instance after a failure.
func (t *ResultTracker) Failovers() int { return t.failovers }

// Failover counts one more move to another instance after a failure.
func (t *ResultTracker) Failover() { t.failovers++ }

// BeginAttempt tells the tracker a new instance takes the stream; resumed when
// results were sent before. The instance replays from the last final: an utterance
// the client has heard start (and maybe end) is announced again by it; those
// repeats are dropped.
func (t *ResultTracker) BeginAttempt(resumed bool) {
	t.base = t.lastIndex + 1
	t.suppressStart = resumed && (t.inSpeech || t.ended)
	t.suppressEnd = false
}

// OnResult takes a result of the current instance: its utterance index on that
// instance, whether it is final and, for a final, where it ends ([DurationMs] of
// its end offset). It returns the utterance index to send it with, or send false
// to drop it. Indices are int32 as on the wire; a stream does not reach 2^31
// utterances.
func (t *ResultTracker) OnResult(index int32, final bool, endMs float64) (int32, bool) {
	i := t.base + int64(index)
	if i <= t.lastIndex {
		return 0, false
	}
	if final {
		if endMs <= t.lastEndMs {
			// Replayed audio that only repeats what a final already covered.
			t.base--
			return 0, false
		}
		t.lastIndex = i
		t.lastEndMs = endMs
		t.ended = false
		t.finalResults++
	}
	return int32(i), true
}

// OnSpeechEvent takes a speech event of the current instance: started for a speech
// start, false for anything else (a speech end, or an unspecified type, as the
// Python router reads it), at offsetMs ([DurationMs] of its offset). It returns
// whether to send it.
func (t *ResultTracker) OnSpeechEvent(started bool, offsetMs float64) bool {
	if started {
		// A repeat: the utterance open at the failure, or one whose end the client
		// has had (it starts before that end), not the next one.
		repeat := !t.ended || offsetMs < t.endedAt
		if t.suppressStart && repeat {
			t.suppressStart = false
			t.suppressEnd = t.ended
			return false
		}
		t.suppressStart = false
		t.inSpeech, t.ended = true, false
		return true
	}
	t.suppressStart = false
	if t.suppressEnd { // the end of the repeated start
		t.suppressEnd = false
		return false
	}
	t.inSpeech, t.ended, t.endedAt = false, true, offsetMs
	return true
}

// DurationMs returns a protobuf Duration (seconds, nanos) in milliseconds, computed
// as the Python router does (seconds*1000.0 + nanos/1e6, each step rounded), so
// that comparisons of offsets decide alike.
func DurationMs(seconds int64, nanos int32) float64 {
	// The conversion rounds the product: no fused multiply-add.
	return float64(float64(seconds)*1000.0) + float64(nanos)/1e6
}

// SummaryAudioNanos returns the audio_processed figure a stream's summary gets, in
// nanoseconds, from [ReplayLog.AudioSeconds]; ok is false when there is none to
// set (a container: the instance's own figure stays).
func SummaryAudioNanos(audioSeconds float64) (nanos int64, ok bool) {
	if !(audioSeconds > 0) {
		return 0, false
	}
	return int64(math.RoundToEven(audioSeconds * 1e9)), true
}
