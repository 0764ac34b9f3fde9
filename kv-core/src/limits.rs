//! Limits and defaults that client and node share, so both refuse the same inputs, and the gRPC
//! message sizes derived from the value limit (tonic's default of 4 MiB is never relied on).

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Default longest value accepted, in bytes (configurable per node with `--max-value-bytes`).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Default number of fixed partitions Q (a power of two).
pub const DEFAULT_PARTITIONS: u32 = 32;
/// Default number of virtual tokens T per node.
pub const DEFAULT_TOKENS_PER_NODE: u32 = 64;
/// Default replication factor N.
pub const DEFAULT_REPLICAS: u32 = 3;
/// Longest keyspace name, in bytes.
pub const MAX_KEYSPACE_NAME_BYTES: usize = 64;
/// Default number of writes (put, delete, compare-and-swap) one node handles at once; past it
/// a write is refused with `RESOURCE_EXHAUSTED` rather than queued without bound.
pub const DEFAULT_MAX_WRITES_IN_FLIGHT: usize = 1024;
/// Longest status message a node sends, in bytes. Messages travel in the `grpc-message` header
/// and C-core clients refuse headers over 16 KiB; echoed input is cut well before that.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;
/// Longest piece of client input (a name, a key) repeated inside a status message, in bytes.
pub const MAX_ECHOED_INPUT_BYTES: usize = 80;

/// Room in a message for everything but the value: key, keyspace name, options, request id,
/// protobuf and gRPC framing. Generous, so a request whose value is at the limit always decodes
/// and a value just over it is refused by validation, naming `--max-value-bytes`.
pub const MESSAGE_HEADROOM_BYTES: usize = 64 * 1024;
/// How many largest values one node-to-node message may carry (Raft batches, snapshot chunks,
/// anti-entropy pages are kept below this).
pub const PEER_MESSAGE_VALUES: usize = 4;
/// Smallest node-to-node message limit, whatever the value limit: snapshot chunks
/// ([`RAFT_SNAPSHOT_CHUNK_BYTES`]) and batches of small entries must always fit.
pub const MIN_PEER_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest chunk of a Raft snapshot sent in one message.
pub const RAFT_SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Smallest byte budget of one Raft AppendEntries message (a batch of small entries).
pub const MIN_RAFT_APPEND_BYTES: usize = 1024 * 1024;

/// Largest public-API message (request or response) for a node whose values are at most
/// `max_value_bytes`: one value plus headroom.
pub fn max_request_bytes(max_value_bytes: usize) -> usize {
    max_value_bytes.saturating_add(MESSAGE_HEADROOM_BYTES)
}

/// Largest public-API response a node sends and a forwarding node accepts: one value plus
/// headroom, and never less than tonic's usual 4 MiB (a `Ring` answer of a large cluster).
pub fn max_response_bytes(max_value_bytes: usize) -> usize {
    max_request_bytes(max_value_bytes).max(MIN_PEER_MESSAGE_BYTES)
}

/// Largest node-to-node message for a node whose values are at most `max_value_bytes`.
pub fn max_peer_message_bytes(max_value_bytes: usize) -> usize {
    max_request_bytes(max_value_bytes)
        .saturating_mul(PEER_MESSAGE_VALUES)
        .max(MIN_PEER_MESSAGE_BYTES)
}

/// Byte budget of one Raft AppendEntries message: one largest value (an entry is never split),
/// or a batch of smaller entries up to [`MIN_RAFT_APPEND_BYTES`]. Always below
/// [`max_peer_message_bytes`]. Kept small because openraft gives every AppendEntries one
/// heartbeat interval to be encoded, sent, made durable and answered.
pub fn max_raft_append_bytes(max_value_bytes: usize) -> usize {
    max_request_bytes(max_value_bytes).max(MIN_RAFT_APPEND_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_messages_hold_a_raft_batch_and_a_snapshot_chunk_for_any_value_limit() {
        for v in [
            1,
            1024,
            DEFAULT_MAX_VALUE_BYTES,
            64 * 1024 * 1024,
            usize::MAX,
        ] {
            let peer = max_peer_message_bytes(v);
            assert!(max_request_bytes(v) > v.min(usize::MAX - 1), "{v}");
            assert!(max_raft_append_bytes(v) <= peer, "{v}");
            assert!(
                RAFT_SNAPSHOT_CHUNK_BYTES + MESSAGE_HEADROOM_BYTES <= peer,
                "{v}"
            );
        }
        assert_eq!(
            max_request_bytes(DEFAULT_MAX_VALUE_BYTES),
            DEFAULT_MAX_VALUE_BYTES + MESSAGE_HEADROOM_BYTES
        );
    }
}
