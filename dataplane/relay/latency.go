package relay

import "time"

// latencySampleEvery: one message in this many is timed, in each direction,
// from its arrival to its write (services/router/relay.py's LATENCY_SAMPLE_EVERY).
const latencySampleEvery = 8

// latencyFlushEvery is how often a stream reports its samples at most (and at
// its end). Each latency event costs the control plane about 0.2 ms of CPU
// (profiled): one per stream a second was a tenth of a core at 500 streams,
// for a histogram that Prometheus reads every 15 s or so.
const latencyFlushEvery = 5 * time.Second

// maxPendingSamples bounds the client requests timed but not yet sent; past it,
// no more are timed until some are sent.
const maxPendingSamples = 32

// latencies are a stream's latency samples, in seconds, until the next latency
// event. The upstream side is shared by the reader and the writer (under the
// stream's mu); the downstream side and lastSent are the handler's.
type latencies struct {
	// pending are the sampled client requests not yet sent, by the stream byte
	// their audio ends at, oldest first: a ring.
	pending     [maxPendingSamples]arrival
	first, size int

	up       []float64
	down     []float64
	lastSent time.Time
}

type arrival struct {
	end int64
	at  time.Time
}

// arrived records that the client request whose audio ends at stream byte end
// arrived at at.
func (l *latencies) arrived(end int64, at time.Time) {
	if l.size == maxPendingSamples {
		return
	}
	l.pending[(l.first+l.size)%maxPendingSamples] = arrival{end, at}
	l.size++
}

// sent returns when the request whose audio ends at stream byte end arrived, if
// it was sampled; the sampled requests before it (sent to an instance that
// failed, or empty) are forgotten.
func (l *latencies) sent(end int64) (time.Time, bool) {
	for l.size > 0 {
		a := l.pending[l.first]
		if a.end > end {
			return time.Time{}, false
		}
		l.first = (l.first + 1) % maxPendingSamples
		l.size--
		if a.end == end {
			return a.at, true
		}
	}
	return time.Time{}, false
}
