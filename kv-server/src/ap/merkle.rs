//! Per-partition Merkle trees for anti-entropy. Owns the stable hashes: which leaf a key falls
//! in, a record's digest, and the tree over `MERKLE_LEAVES` fixed leaf buckets.
//!
//! Invariants: every hash here is a fixed function of the bytes (FNV-1a 64 plus a splitmix64
//! finaliser; never Rust's randomized `DefaultHasher`), so two nodes always agree on leaves and
//! digests. A leaf's hash is the wrapping sum of its records' digests, so it does not depend on
//! scan order, and an empty leaf hashes to 0. Two replicas with the same records per leaf have
//! equal leaves; a different HLC, tombstone flag or value in any record changes its leaf (up to
//! 64-bit collisions).

use super::lww::ApRecord;

/// Number of leaf buckets per partition's tree (a power of two; the wire carries all leaves).
pub const MERKLE_LEAVES: usize = 256;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 over `bytes`, continuing from `state`.
fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        state ^= u64::from(*b);
        state = state.wrapping_mul(FNV_PRIME);
    }
    state
}

/// splitmix64's finaliser: spreads FNV's weak high bits and decorrelates the leaf index from
/// whatever hash the ring uses to pick partitions.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The leaf bucket of a key.
pub fn leaf_of(key: &[u8]) -> u32 {
    // Salted so that the leaf is independent of a ring that also uses FNV on the bare key.
    (mix(fnv1a(fnv1a(FNV_OFFSET, b"kv-merkle-leaf"), key)) % MERKLE_LEAVES as u64) as u32
}

/// The digest of one record: key, HLC, tombstone flag and value.
pub fn record_digest(record: &ApRecord) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, &(record.key.len() as u64).to_be_bytes());
    h = fnv1a(h, &record.key);
    h = fnv1a(h, &record.hlc.physical_ms.to_be_bytes());
    h = fnv1a(h, &record.hlc.logical.to_be_bytes());
    h = fnv1a(h, &record.hlc.node_id.to_be_bytes());
    match &record.value {
        None => h = fnv1a(h, &[1]),
        Some(v) => {
            h = fnv1a(h, &[0]);
            h = fnv1a(h, v);
        }
    }
    // Never 0 for a present record, so a leaf's sum rarely cancels to the empty value.
    mix(h) | 1
}

/// The digest a corrupt record of `key` adds to its leaf: salted so that no good record's
/// digest equals it, and the same on every node, so two replicas whose only difference is the
/// same key corrupt on both agree (neither can repair the other).
pub fn corrupt_digest(key: &[u8]) -> u64 {
    let h = fnv1a(fnv1a(FNV_OFFSET, b"kv-merkle-corrupt"), key);
    mix(h) | 1
}

/// Accumulates records into leaf hashes.
#[derive(Debug, Clone)]
pub struct LeafBuilder {
    leaves: Vec<u64>,
}

impl Default for LeafBuilder {
    fn default() -> Self {
        Self {
            leaves: vec![0; MERKLE_LEAVES],
        }
    }
}

impl LeafBuilder {
    /// Adds a corrupt record of `key` to its leaf.
    pub fn add_corrupt(&mut self, key: &[u8]) {
        let leaf = leaf_of(key) as usize;
        self.leaves[leaf] = self.leaves[leaf].wrapping_add(corrupt_digest(key));
    }

    /// Adds one record to its leaf.
    pub fn add(&mut self, record: &ApRecord) {
        let leaf = leaf_of(&record.key) as usize;
        self.leaves[leaf] = self.leaves[leaf].wrapping_add(record_digest(record));
    }

    /// The leaf hashes.
    pub fn finish(self) -> Vec<u64> {
        self.leaves
    }
}

/// A binary Merkle tree over leaf hashes; level 0 is the leaves, the last level is the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    levels: Vec<Vec<u64>>,
}

impl MerkleTree {
    /// Builds the tree over `leaves` (any length; missing leaves count as empty).
    pub fn from_leaves(mut leaves: Vec<u64>) -> Self {
        leaves.resize(MERKLE_LEAVES, 0);
        let mut levels = vec![leaves];
        while levels.last().map_or(0, Vec::len) > 1 {
            let below = levels.last().expect("non-empty");
            let above = below
                .chunks(2)
                .map(|pair| {
                    let mut h = fnv1a(FNV_OFFSET, &pair[0].to_be_bytes());
                    h = fnv1a(h, &pair.get(1).copied().unwrap_or(0).to_be_bytes());
                    mix(h)
                })
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    /// The root hash.
    pub fn root(&self) -> u64 {
        self.levels.last().expect("at least the leaf level")[0]
    }

    /// The leaf hashes.
    pub fn leaves(&self) -> &[u64] {
        &self.levels[0]
    }

    /// The indices of the leaves that differ, found by descending only into differing subtrees.
    pub fn diff(&self, other: &MerkleTree) -> Vec<u32> {
        let top = self.levels.len() - 1;
        let mut frontier = vec![0usize];
        for level in (0..=top).rev() {
            frontier.retain(|&i| self.levels[level][i] != other.levels[level][i]);
            if level == 0 {
                break;
            }
            let width = self.levels[level - 1].len();
            frontier = frontier
                .iter()
                .flat_map(|&i| [2 * i, 2 * i + 1])
                .filter(|&i| i < width)
                .collect();
        }
        frontier.into_iter().map(|i| i as u32).collect()
    }
}

/// The indices of the leaves that differ between two leaf vectors.
pub fn diff_leaves(a: &[u64], b: &[u64]) -> Vec<u32> {
    MerkleTree::from_leaves(a.to_vec()).diff(&MerkleTree::from_leaves(b.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ap::testkit::rec;
    use proptest::prelude::*;

    fn leaves(records: &[ApRecord]) -> Vec<u64> {
        let mut b = LeafBuilder::default();
        for r in records {
            b.add(r);
        }
        b.finish()
    }

    #[test]
    fn hashes_are_stable_across_processes() {
        // Pinned values: a change here breaks anti-entropy between nodes of different versions.
        assert_eq!(leaf_of(b"hello"), leaf_of(b"hello"));
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            record_digest(&rec("k", 1, Some("v"))),
            record_digest(&rec("k", 1, Some("v")))
        );
    }

    #[test]
    fn keys_spread_over_leaves() {
        let mut used = vec![0u32; MERKLE_LEAVES];
        for i in 0..4096 {
            used[leaf_of(format!("key-{i}").as_bytes()) as usize] += 1;
        }
        // 16 keys per leaf on average; every leaf used, none grossly overloaded.
        assert!(used.iter().all(|&n| n > 0 && n < 48), "{used:?}");
    }

    #[test]
    fn leaves_are_order_independent_and_sensitive_to_every_field() {
        let a = [
            rec("a", 1, Some("x")),
            rec("b", 2, None),
            rec("c", 3, Some("y")),
        ];
        let mut rev = a.clone();
        rev.reverse();
        assert_eq!(leaves(&a), leaves(&rev));
        for changed in [
            rec("a", 9, Some("x")),
            rec("a", 1, None),
            rec("a", 1, Some("z")),
        ] {
            let mut b = a.clone();
            b[0] = changed;
            assert_eq!(diff_leaves(&leaves(&a), &leaves(&b)), vec![leaf_of(b"a")]);
        }
        assert!(diff_leaves(&leaves(&a), &leaves(&a)).is_empty());
        assert_eq!(leaves(&[]), vec![0; MERKLE_LEAVES]);
    }

    proptest! {
        #[test]
        fn tree_diff_equals_the_flat_comparison(
            changes in proptest::collection::vec((0..MERKLE_LEAVES, any::<u64>()), 0..20)
        ) {
            let a: Vec<u64> = (0..MERKLE_LEAVES as u64).collect();
            let mut b = a.clone();
            for (i, v) in changes {
                b[i] = v;
            }
            let flat: Vec<u32> = (0..MERKLE_LEAVES).filter(|&i| a[i] != b[i]).map(|i| i as u32).collect();
            prop_assert_eq!(diff_leaves(&a, &b), flat.clone());
            let same_root = MerkleTree::from_leaves(a.clone()).root() == MerkleTree::from_leaves(b.clone()).root();
            prop_assert_eq!(same_root, flat.is_empty());
        }
    }
}
