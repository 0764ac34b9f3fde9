//! AP records and their last-write-wins merge. Owns the total order that decides every conflict.
//!
//! `merge(a, b)` returns the greater of the two records under the order
//! `(hlc, tombstone, value bytes)`: the higher HLC wins (ties on HLC time break on node id, which
//! is part of `Hlc`'s order); two records with an *equal* HLC but different content (impossible
//! unless a node reissued a timestamp, e.g. after restoring an old data directory) still merge
//! deterministically: the tombstone wins over a value (a delete is never undone by the tie), and
//! between two values the lexicographically greater bytes win. Because `merge` is the maximum of a
//! total order it satisfies the laws every replica's convergence depends on (property-tested below):
//! - commutative: `merge(a, b) == merge(b, a)`
//! - associative: `merge(merge(a, b), c) == merge(a, merge(b, c))`
//! - idempotent: `merge(a, a) == a`

use crate::storage::record::StoredRecord;
use crate::types::{Hlc, Version};
use std::cmp::Ordering;

/// One AP record: a key's value or tombstone at the HLC timestamp of its write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApRecord {
    /// The user key.
    pub key: Vec<u8>,
    /// Timestamp given by the write's coordinator.
    pub hlc: Hlc,
    /// The value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

impl ApRecord {
    /// Whether this record is a tombstone (a delete).
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The stored (checksummed) form; the key lives in the tree key.
    pub fn to_stored(&self) -> StoredRecord {
        StoredRecord {
            version: Version::Hlc(self.hlc),
            value: self.value.clone(),
        }
    }

    /// Rebuilds a record from its stored form; `None` if it carries a CP revision, not an HLC.
    pub fn from_stored(key: Vec<u8>, stored: StoredRecord) -> Option<Self> {
        match stored.version {
            Version::Hlc(hlc) => Some(Self {
                key,
                hlc,
                value: stored.value,
            }),
            Version::Revision(_) => None,
        }
    }
}

/// The LWW total order on records of one key (see the module doc).
pub fn lww_cmp(a: &ApRecord, b: &ApRecord) -> Ordering {
    a.hlc
        .cmp(&b.hlc)
        .then_with(|| a.is_tombstone().cmp(&b.is_tombstone()))
        .then_with(|| a.value.cmp(&b.value))
}

/// Whether `new` would replace `old` under LWW (strictly greater).
pub fn supersedes(new: &ApRecord, old: &ApRecord) -> bool {
    lww_cmp(new, old) == Ordering::Greater
}

/// Merges two records of the same key: the LWW winner.
pub fn merge(a: &ApRecord, b: &ApRecord) -> ApRecord {
    debug_assert_eq!(a.key, b.key, "merge of records of different keys");
    if lww_cmp(a, b) == Ordering::Less {
        b.clone()
    } else {
        a.clone()
    }
}

/// Merges an optional existing record with another (absent is the identity).
pub fn merge_opt(a: Option<&ApRecord>, b: &ApRecord) -> ApRecord {
    match a {
        Some(a) => merge(a, b),
        None => b.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(physical_ms: u64, logical: u32, node_id: u64, value: Option<&[u8]>) -> ApRecord {
        ApRecord {
            key: b"k".to_vec(),
            hlc: Hlc {
                physical_ms,
                logical,
                node_id,
            },
            value: value.map(<[u8]>::to_vec),
        }
    }

    /// Small domains so that equal HLCs (the tie rules) come up often.
    fn arb_record() -> impl Strategy<Value = ApRecord> {
        (
            0u64..3,
            0u32..2,
            1u64..3,
            proptest::option::of(proptest::collection::vec(0u8..3, 0..2)),
        )
            .prop_map(|(p, l, n, v)| rec(p, l, n, v.as_deref()))
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(merge(&a, &b), merge(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_record(), b in arb_record(), c in arb_record()) {
            prop_assert_eq!(merge(&merge(&a, &b), &c), merge(&a, &merge(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(merge(&a, &a), a.clone());
            // Re-merging a record already merged in changes nothing.
            let m = merge(&a, &b);
            prop_assert_eq!(merge(&m, &b), m.clone());
        }

        #[test]
        fn merge_keeps_the_highest_timestamp(a in arb_record(), b in arb_record()) {
            let m = merge(&a, &b);
            prop_assert_eq!(m.hlc, a.hlc.max(b.hlc));
            prop_assert!(m == a || m == b);
        }
    }

    #[test]
    fn higher_timestamp_wins_and_ties_break_on_node_id() {
        let old = rec(5, 9, 3, Some(b"old"));
        let new = rec(6, 0, 1, Some(b"new"));
        assert_eq!(merge(&old, &new), new);
        let n1 = rec(6, 0, 1, Some(b"from-1"));
        let n2 = rec(6, 0, 2, Some(b"from-2"));
        assert_eq!(merge(&n1, &n2), n2);
        // A newer delete wins over an older value, an older delete loses to a newer value.
        assert_eq!(merge(&rec(7, 0, 1, None), &new).value, None);
        assert_eq!(merge(&rec(5, 0, 1, None), &new), new);
    }

    #[test]
    fn equal_timestamps_with_different_content_merge_deterministically() {
        let v = rec(6, 0, 1, Some(b"b"));
        let t = rec(6, 0, 1, None);
        assert_eq!(merge(&v, &t), t, "tombstone wins the tie");
        assert_eq!(merge(&t, &v), t);
        let a = rec(6, 0, 1, Some(b"a"));
        assert_eq!(merge(&a, &v), v, "greater bytes win between values");
        assert_eq!(merge(&v, &a), v);
    }

    #[test]
    fn stored_form_round_trips() {
        let r = rec(6, 1, 2, Some(b"x"));
        assert_eq!(ApRecord::from_stored(r.key.clone(), r.to_stored()), Some(r));
        let cp = StoredRecord {
            version: Version::Revision(3),
            value: None,
        };
        assert_eq!(ApRecord::from_stored(b"k".to_vec(), cp), None);
    }
}
