//! At-most-once writes: what a CP state machine remembers of requests tagged with a
//! `RequestId`, so a retry after an ambiguous failure (a reset connection, a deadline) gets the
//! first outcome instead of applying again.
//!
//! Kept as records inside the state machine's own key space, under a prefix no client key can
//! have (keyspace id 0 is never assigned), so snapshots, installs and crash replay carry them
//! like any other record:
//! - `\0\0\0\0req/` + client id + seq  -> the outcome (revision of a put, delete or swap);
//! - `\0\0\0\0req-order/` + log index  -> client id + seq (the eviction order).
//!
//! **Window:** an id is remembered for [`REQUEST_ID_WINDOW`] log entries of its group after the
//! entry that applied it; older ones are forgotten in log order, identically on every replica.
//! A CAS that did not swap is not remembered: it changed nothing, so a retry may evaluate again
//! (the client never saw the first outcome, so either answer is linearizable).

use crate::cp::types::{CasOutcome, RequestId, Response};

/// How many log entries of a group an applied request id is remembered for. At 1,000 writes a
/// second to one partition that is 50 s; client deadlines are capped at 5 minutes, so a retry
/// beyond the window is possible only for a partition written faster than ~170 writes/s.
pub const REQUEST_ID_WINDOW: u64 = 50_000;

/// Prefix of remembered outcomes.
pub const OUTCOME_PREFIX: &[u8] = b"\0\0\0\0req/";
/// Prefix of the eviction order.
pub const ORDER_PREFIX: &[u8] = b"\0\0\0\0req-order/";

const WRITTEN: u8 = 1;
const SWAPPED: u8 = 2;

/// The state machine key under which `id`'s outcome is kept.
pub fn outcome_key(id: RequestId) -> Vec<u8> {
    [
        OUTCOME_PREFIX,
        &id.client_id.to_be_bytes(),
        &id.seq.to_be_bytes(),
    ]
    .concat()
}

/// The state machine key of the eviction-order entry written at `index`.
pub fn order_key(index: u64) -> Vec<u8> {
    [ORDER_PREFIX, &index.to_be_bytes()].concat()
}

/// The value of an order entry: the id it evicts.
pub fn encode_id(id: RequestId) -> Vec<u8> {
    [id.client_id.to_be_bytes(), id.seq.to_be_bytes()].concat()
}

/// The id an order entry names; `None` for bytes of the wrong length (never written by us).
pub fn decode_id(bytes: &[u8]) -> Option<RequestId> {
    let client_id = u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    (bytes.len() == 16).then_some(RequestId { client_id, seq })
}

/// What to remember of a response: only writes that changed something.
pub fn remember(resp: &Response) -> Option<Vec<u8>> {
    let (kind, revision) = match resp {
        Response::Written { revision } => (WRITTEN, *revision),
        Response::Cas(CasOutcome::Swapped { revision }) => (SWAPPED, *revision),
        _ => return None,
    };
    let mut out = vec![kind];
    out.extend_from_slice(&revision.to_be_bytes());
    Some(out)
}

/// The response a remembered outcome stands for; `None` for bytes we never wrote.
pub fn recall(bytes: &[u8]) -> Option<Response> {
    let (&kind, rest) = bytes.split_first()?;
    let revision = u64::from_be_bytes(rest.try_into().ok()?);
    match kind {
        WRITTEN => Some(Response::Written { revision }),
        SWAPPED => Some(Response::Cas(CasOutcome::Swapped { revision })),
        _ => None,
    }
}

/// The first log index whose order entry is still inside the window after applying up to
/// `last_applied`: order entries below it are forgotten.
pub fn window_start(last_applied: u64) -> u64 {
    last_applied.saturating_sub(REQUEST_ID_WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_and_only_changes_are_remembered() {
        for resp in [
            Response::Written { revision: 7 },
            Response::Cas(CasOutcome::Swapped { revision: u64::MAX }),
        ] {
            assert_eq!(recall(&remember(&resp).unwrap()), Some(resp));
        }
        assert_eq!(
            remember(&Response::Cas(CasOutcome::Mismatch { current: None })),
            None
        );
        assert_eq!(remember(&Response::Empty), None);
        assert_eq!(recall(&[9, 0, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(recall(&[WRITTEN, 1]), None);
    }

    #[test]
    fn ids_round_trip_and_keys_sort_by_index() {
        let id = RequestId {
            client_id: u64::MAX - 3,
            seq: 42,
        };
        assert_eq!(decode_id(&encode_id(id)), Some(id));
        assert_eq!(decode_id(&[1, 2, 3]), None);
        assert!(order_key(9) < order_key(10) && order_key(255) < order_key(256));
        assert!(!outcome_key(id).starts_with(ORDER_PREFIX));
        assert!(!order_key(1).starts_with(OUTCOME_PREFIX));
        assert_eq!(window_start(10), 0);
        assert_eq!(window_start(REQUEST_ID_WINDOW + 5), 5);
    }
}
