// Package relay is the native StreamingRecognize relay of the router's data
// path: services/router/relay.py's StreamRelay (and the first-request handling
// of the router's servicer) in Go, with admission and placement asked of the
// control plane over a DataPlaneService.Attach call per stream
// (protos/voxmesh/router/v1/dataplane.proto), every one of them carried by one
// Connect call (connect.go): the events of many streams go in one batch, and a
// stream costs the control plane no gRPC call of its own. The Connect call is
// opened when the first stream needs it, and again after it breaks; its loss
// ends every stream it carried with its status, as their own calls would end.
//
// The life of a relayed stream:
//
//	stream begins: Attach opened (a draining or full router ends it at once)
//	   │ first request
//	   └──open──▶ ROUTING ──route──▶ QUEUED ◀────────────────────────────────────┐
//	                                             │ place ... placement             │ instance full or not
//	                                             ▼                                 │ accepting, before any
//	                                          ATTACHED ────────────────────────────┘ response: FULL
//	                                           │ │ │
//	        instance EOF, or a failure after ──┘ │ └── any other status: ERROR ──▶ DONE (the
//	        the summary reached the client: DONE │                                  client gets it)
//	                                             ▼ instance failed (UNAVAILABLE,
//	                                          RESUMING   CANCELLED, UNKNOWN): FAILED
//	                                             │ audio after the last final to replay
//	                                             │ (when finals cover it all: once the
//	                                             │ client sends more) ──place──▶ QUEUED
//	                                             └ finals cover all the audio and the client
//	                                               half-closed: the relay sends the summary ──▶ DONE
//
//	any state: the control plane ends the call with a status ──▶ the client gets it
//	           a bad request, no audio, a stall, unreplayable ──reject──▶ the control plane's status
//	           the client cancels or its deadline passes ──▶ instance call and Attach cancelled
//	ATTACHED:  a response the client has not taken for the idle timeout (it stopped
//	           reading) ──finished──▶ OUT_OF_RANGE, after what it was sent (downstream.go)
//
// Three goroutines serve a stream: the client reader (appends audio to the
// failover.ReplayLog, pausing while too much is unsent: RelayLimits.queue_max_bytes
// while no instance holds the stream, relay_buffer_bytes while one does), the
// upstream writer of the current attempt (follows the log's cursor) and the
// server's handler goroutine (talks to the control plane, then reads the
// instance's responses and writes them to the client one at a time, so a slow
// client slows the instance's stream instead of growing a buffer). A fourth
// waits on the Attach call's answers; a fifth, from the first response on,
// sends the client what the handler writes, so that the handler can give up
// on a client that stopped reading (downstream.go). None is started per message. The Connect
// call has a writer, which sends what the streams queued since its last batch,
// and a reader, which hands each answer to its stream.
//
// Messages stay bytes where the relay changes nothing: the client's audio
// requests go to the instance as they came (unless a replay cuts a chunk), and
// only responses the failover.ResultTracker renumbers, and the summary, are
// encoded anew.
//
// Where the contract leaves it open, the relay does this:
//   - It opens the Attach call as the client's stream begins, and sends open
//     once the first request arrived (or the client half-closed): the control
//     plane refuses a stream at once while the router drains or is full, and
//     hears of every stream. A client that sends nothing for the idle timeout
//     (Config.IdleTimeout: the router's, before the route brings it) is
//     rejected as stalled, and the control plane words its status.
//   - Every event carries the seconds of audio received so far, and a refused
//     chunk is reported by its length alone (it may be as large as a client
//     message, which an AttachRequest around it would outgrow). For the same
//     reason open carries a first request whole only when it is a config, and
//     reject a refused request as the field it set alone (request.go); an event
//     that would still outgrow the Connect call's limit ends its stream alone
//     (connect.go), never the call that carries every stream.
//   - An attempt that the client's fault cuts short (a bad request) is not
//     reported with attempt_ended: reject follows, and the end of the call
//     releases the placement, as it does for a client that cancels.
//   - It asks for the first instance with open (open.place) and takes the
//     placement from the route when it came there; the outcome of the last
//     attempt (DONE or ERROR) and the latencies not yet sent go with finished.
//     Each event costs the control plane work, so a stream placed at once
//     sends two (docs/router.md).
//   - A route whose idle_timeout_ms is 0 means Config.IdleTimeout.
package relay
