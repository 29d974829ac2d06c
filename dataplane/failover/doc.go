// Package failover is the failover bookkeeping of the router's data path: what a
// new instance is sent after the one serving a stream failed, and what the client
// sees of the instances' answers. It is a port of the Python router's
// services/router/failover.py (with what that uses of src/voxmesh/rpc/metadata.py)
// and decides exactly alike: tests/vectors/failover.json records the Python
// answers, and this package's tests replay them.
//
// [ReplayLog] keeps the audio of one stream from its resume point on and is also
// its send queue. [ResultTracker] turns the responses of successive instances into
// one consistent stream for the client. Neither knows protobuf: the relay hands
// them the few fields they need ([DurationMs] converts a protobuf Duration the way
// the Python router does) and adds [ReplayLog.ResumeMetadata] to the call it opens.
//
// Neither type is safe for concurrent use; a relay owns one of each per stream.
package failover
