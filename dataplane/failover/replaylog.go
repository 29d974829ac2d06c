package failover

import (
	"errors"
	"math"
	"strconv"
)

// ReplayConfig is what a [ReplayLog] is made for: the stream's audio format and
// the router's limits.
type ReplayConfig struct {
	// Linear16 is true for raw LINEAR16 audio, which can be cut anywhere; false for
	// a container, which is kept and replayed whole.
	Linear16 bool
	// SampleRate is the LINEAR16 sample rate in Hz, above 0. A container needs
	// none (0); the Python router passes the stream config's, to the same effect.
	SampleRate int64
	// ReplayMaxBytes bounds the audio kept: past it, audio the instance has
	// received is dropped.
	ReplayMaxBytes int64
	// ContextMs is how far before the resume point final utterances are kept as a
	// lead-in for the next instance (0: none).
	ContextMs int64
}

// ReplayLog is the audio of one stream from its resume point on, with a send
// cursor: what the current instance has received.
//
// The resume point is the end of the last final result. LINEAR16 can be cut
// anywhere, so the log drops everything before it (rounded down to a time that is
// both a whole millisecond and a whole sample) and a new instance gets the rest
// with [OffsetKey]. A container cannot be cut: the log keeps the whole stream and a
// new instance gets all of it with [SkipKey]. With ReplayConfig.ContextMs the
// replay starts with the final utterances of the last ContextMs before the resume
// point as a lead-in ([ContextKey]), context only.
//
// Past ReplayConfig.ReplayMaxBytes of kept audio the log drops what the instance
// has already received, the lead-in first; the stream is not [ReplayLog.Replayable]
// until a final result moves the resume point past the dropped audio (a container
// never again).
//
// Times are int64 milliseconds as in Python (which has unbounded ints); values
// beyond int64 or NaN (impossible from a protobuf Duration) saturate or count as 0
// where Python would raise or go on with big ints.
type ReplayLog struct {
	// HalfClosed is true once the client sent all its audio; the relay sets it.
	HalfClosed bool

	linear16       bool
	contextMs      int64
	rate           int64
	bytesPerSecond int64
	stepMs         int64 // the grid: whole milliseconds that are whole samples
	maxKept        int64

	finals     []Final // kept for the lead-in: the last contextMs before the resume point
	prompt     string  // the text of the finals before those
	replayFrom int64   // byte where the replay of the last Restart starts
	entries    []entry
	next       int   // index in entries of the next chunk to send
	base       int64 // byte of the resume point: endMs rounded down to the grid
	endMs      int64 // where the recognised audio ends: the last final's end
	sent       int64 // bytes the current instance has been sent
	kept       int64 // bytes in entries
	droppedTo  int64 // end of the last chunk dropped to honour the bound
	total      int64
}

// entry is a chunk of client audio that starts at stream byte start.
type entry struct {
	start   int64
	audio   []byte
	request []byte // what the caller gave AppendRequest with it, if anything
}

func (e entry) end() int64 { return e.start + int64(len(e.audio)) }

// NewReplayLog returns an empty log for a stream with cfg; an error when cfg is
// LINEAR16 without a positive sample rate.
func NewReplayLog(cfg ReplayConfig) (*ReplayLog, error) {
	if cfg.Linear16 && cfg.SampleRate <= 0 {
		return nil, errors.New("failover: LINEAR16 needs a sample rate above 0, not " +
			strconv.FormatInt(cfg.SampleRate, 10))
	}
	step := int64(1)
	if cfg.Linear16 {
		step = 1000 / gcd(cfg.SampleRate, 1000)
	}
	return &ReplayLog{
		linear16:       cfg.Linear16,
		contextMs:      cfg.ContextMs,
		rate:           cfg.SampleRate,
		bytesPerSecond: 2 * cfg.SampleRate,
		stepMs:         step,
		maxKept:        cfg.ReplayMaxBytes,
	}, nil
}

// TotalBytes returns the audio bytes received from the client.
func (l *ReplayLog) TotalBytes() int64 { return l.total }

// UnsentBytes returns the bytes received but not yet sent to the current instance.
func (l *ReplayLog) UnsentBytes() int64 { return l.total - l.sent }

// Replayable is false while audio after the resume point was dropped to honour the
// bound.
func (l *ReplayLog) Replayable() bool { return l.base >= l.droppedTo }

// Pending is true while audio after the last final's end is kept: not every byte
// received has its final result (a container's audio is kept whole, so always once
// it has any).
func (l *ReplayLog) Pending() bool {
	if len(l.entries) == 0 {
		return false
	}
	// A final's end is known to the millisecond: the rest of it counts as recognised.
	var recognised int64
	if l.linear16 {
		recognised = floorDiv((l.endMs+1)*l.rate, 1000) * 2
	}
	return l.entries[len(l.entries)-1].end() > recognised
}

// AudioSeconds returns the seconds of LINEAR16 audio received (0 for containers,
// whose rate is unknown).
func (l *ReplayLog) AudioSeconds() float64 {
	if !l.linear16 {
		return 0
	}
	return float64(l.total) / float64(l.bytesPerSecond)
}

// Append adds a chunk of client audio at the end of the stream. The log keeps
// chunk itself: the caller must not change it afterwards.
func (l *ReplayLog) Append(chunk []byte) { l.AppendRequest(chunk, nil) }

// AppendRequest is [ReplayLog.Append] with request, the encoded message that
// carries chunk: [ReplayLog.NextRequest] gives it back whenever it sends the
// chunk whole. The log keeps both as they are.
//
// An empty chunk carries nothing to recognise or replay (an instance only
// restarts its idle timer for one), and counts nothing against any bound: the
// log keeps one only while nothing else waits to be sent, and only until it is
// sent. Otherwise it is dropped: the instance hears from the client anyway
// with what waits. So a client's empty chunks hold no memory.
func (l *ReplayLog) AppendRequest(chunk, request []byte) {
	if len(chunk) == 0 && l.next < len(l.entries) {
		return
	}
	e := entry{start: l.total, audio: chunk, request: request}
	l.entries = append(l.entries, e)
	l.total = e.end()
	l.kept += int64(len(chunk))
	if l.kept > l.maxKept {
		l.dropSent()
	}
}

// Next returns the next chunk for the current instance, or false when it has
// everything received so far. The first chunk after a [ReplayLog.Restart] may be
// the tail of a kept one. The slice shares memory with what was appended: do not
// change it.
func (l *ReplayLog) Next() ([]byte, bool) {
	audio, _, ok := l.NextRequest()
	return audio, ok
}

// NextRequest is [ReplayLog.Next] with the request given to
// [ReplayLog.AppendRequest] for the chunk when it goes whole; nil when it goes
// cut (the tail of a kept chunk) or came without one.
func (l *ReplayLog) NextRequest() (audio, request []byte, ok bool) {
	if l.next >= len(l.entries) {
		return nil, nil, false
	}
	e := l.entries[l.next]
	if len(e.audio) == 0 { // sent once, never replayed (AppendRequest)
		l.removeNext()
		return e.audio, e.request, true
	}
	l.next++
	audio, request = e.audio, e.request
	if e.start < l.sent {
		audio, request = audio[l.sent-e.start:], nil
	}
	l.sent = e.end()
	if l.kept > l.maxKept {
		l.dropSent()
	}
	return audio, request, true
}

// Restart rewinds the cursor to the resume point (the start of the lead-in) for a
// new instance. It returns false when audio the new instance needs was already
// dropped (the stream outgrew its replay bound), so it cannot be replayed.
func (l *ReplayLog) Restart() bool {
	if !l.Replayable() {
		return false
	}
	// The lead-in goes too, from its first final the bound left whole.
	l.sent = l.lead()
	l.replayFrom = l.sent
	l.next = 0
	// What ends by the cursor was received; an empty chunk at the cursor was not
	// yet sent.
	for l.next < len(l.entries) && l.entries[l.next].end() <= l.sent && len(l.entries[l.next].audio) > 0 {
		l.next++
	}
	return true
}

// ResumeMetadata returns the metadata that tells a new instance where the replay
// (from the last [ReplayLog.Restart]) starts, and which part of it is a lead-in:
// from its start to the last final's end. Empty for a replay from the start with
// nothing final.
func (l *ReplayLog) ResumeMetadata() []MetadataPair {
	var key string
	var startMs int64
	if l.linear16 {
		key, startMs = OffsetKey, floorDiv(l.replayFrom*1000, l.bytesPerSecond)
	} else { // the whole container is replayed: the instance discards up to startMs
		key, startMs = SkipKey, l.endMs
		if len(l.finals) > 0 {
			startMs = l.finals[0].StartMs
		}
	}
	var md []MetadataPair
	if startMs != 0 {
		md = append(md, MetadataPair{key, strconv.FormatInt(startMs, 10)})
	}
	if startMs < l.endMs {
		var earlier []string // finals whose audio the bound dropped: prompt only
		lead := ReplayContext{LeadInMs: l.endMs - startMs}
		for _, f := range l.finals {
			if f.StartMs < startMs {
				earlier = append(earlier, f.Text)
			} else {
				lead.Finals = append(lead.Finals, f)
			}
		}
		lead.Prompt = ExtendPrompt(l.prompt, earlier)
		md = append(md, MetadataPair{ContextKey, string(lead.Encode())})
	}
	return md
}

// Commit records a final result over [startMs, endMs) with text: nothing before its
// end needs recognising again, and it is context for the next utterance. Times are
// truncated to whole milliseconds; a LINEAR16 end never moves past what the
// instance was sent, and a final that does not end after the last one changes
// nothing.
func (l *ReplayLog) Commit(endMs, startMs float64, text string) {
	end := truncMs(endMs)
	if l.linear16 { // never past what the instance was sent
		end = min(end, floorDiv(l.sent*1000, l.bytesPerSecond))
	}
	if end <= l.endMs {
		return
	}
	l.endMs = end
	if l.contextMs != 0 && text != "" {
		l.finals = append(l.finals, Final{StartMs: min(truncMs(startMs), end), EndMs: end, Text: text})
	}
	for len(l.finals) > 0 &&
		(len(l.finals) > MaxContextFinals || l.grid(l.finals[0].StartMs) < end-l.contextMs) {
		l.prompt = ExtendPrompt(l.prompt, []string{l.finals[0].Text})
		l.finals[0] = Final{}
		l.finals = l.finals[1:]
	}
	if !l.linear16 {
		return
	}
	l.base = max(l.base, floorDiv(l.grid(end)*l.bytesPerSecond, 1000))
	lead := l.lead()
	for len(l.entries) > 0 && l.entries[0].end() <= lead {
		l.kept -= int64(len(l.entries[0].audio))
		l.popFront()
		// Only an empty chunk can go unsent (lead never passes what was sent): it is
		// dropped and the cursor stays. Python's ReplayLog.commit decrements its
		// cursor regardless, to -1, then sends the wrong chunks (a reported bug).
		if l.next > 0 {
			l.next--
		}
	}
}

// grid returns ms rounded down to a whole millisecond that is also a whole sample.
func (l *ReplayLog) grid(ms int64) int64 { return floorDiv(ms, l.stepMs) * l.stepMs }

// lead returns the byte where the lead-in starts: the start (rounded down to a
// whole sample) of the first kept final whose audio the bound has not dropped, or
// the resume point when there is none.
func (l *ReplayLog) lead() int64 {
	for _, f := range l.finals {
		lead := floorDiv(l.grid(f.StartMs)*l.bytesPerSecond, 1000)
		if lead >= l.droppedTo {
			return min(lead, l.base)
		}
	}
	return l.base
}

// dropSent drops sent audio while more than the bound is kept; the lead-in goes
// first: without it the stream still fails over.
func (l *ReplayLog) dropSent() {
	for l.kept > l.maxKept && l.next > 0 && l.entries[0].end() <= l.base {
		l.popSent()
	}
	if l.kept > l.maxKept {
		for l.next > 0 {
			l.popSent()
		}
	}
}

func (l *ReplayLog) popSent() {
	e := l.entries[0]
	l.popFront()
	l.kept -= int64(len(e.audio))
	l.next--
	l.droppedTo = max(l.droppedTo, e.end())
}

// removeNext removes the entry at the cursor (an empty chunk being sent).
func (l *ReplayLog) removeNext() {
	copy(l.entries[l.next:], l.entries[l.next+1:])
	l.entries[len(l.entries)-1] = entry{}
	l.entries = l.entries[:len(l.entries)-1]
}

// popFront removes the oldest entry, letting its audio be collected.
func (l *ReplayLog) popFront() {
	l.entries[0] = entry{}
	l.entries = l.entries[1:]
}

// floorDiv is Python's a // b: the quotient rounded towards minus infinity.
func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

func gcd(a, b int64) int64 {
	if a < 0 {
		a = -a
	}
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// truncMs is Python's int(ms) for a float: truncated towards zero, saturating
// beyond int64 (NaN counts as 0).
func truncMs(ms float64) int64 {
	switch {
	case ms != ms:
		return 0
	case ms >= math.MaxInt64:
		return math.MaxInt64
	case ms <= math.MinInt64:
		return math.MinInt64
	}
	return int64(ms)
}
