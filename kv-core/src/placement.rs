//! The placement hash: key bytes → 64-bit hash → partition. Client and server both call these
//! functions, so token-aware routing and the server's ring agree on every key.
//!
//! **Invariant:** the output is a pure function of the key bytes, identical on every platform
//! and in every release (it is part of the on-disk and on-wire contract: changing it moves every
//! key). The pinned test vectors below catch an accidental change. Never use Rust's randomized
//! `DefaultHasher` here.
//!
//! The hash is FNV-1a 64 (simple, byte-at-a-time, endian-free) followed by murmur3's `fmix64`
//! finaliser: FNV-1a alone mixes poorly into its high bits for short, similar keys, and the
//! partition is taken from the high bits.

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Largest partition count accepted: the partition is at most 32 bits of the hash.
pub const MAX_PARTITIONS: u32 = 1 << 31;

/// FNV-1a 64 of `bytes`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// murmur3's 64-bit finaliser: a bijection in which every input bit affects every output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9a3_4fe9_a1b9);
    k ^= k >> 33;
    k
}

/// The stable 64-bit placement hash of a key (FNV-1a 64, then `fmix64`).
pub fn key_hash(key: &[u8]) -> u64 {
    fmix64(fnv1a64(key))
}

/// The partition that owns `hash`: its top log2(`partitions`) bits.
///
/// Panics unless `partitions` is a power of two no greater than [`MAX_PARTITIONS`] (the ring
/// validates the configured count, so a panic here is a programmer error).
pub fn partition_for_hash(hash: u64, partitions: u32) -> u32 {
    assert!(
        partitions.is_power_of_two() && partitions <= MAX_PARTITIONS,
        "partition count {partitions} must be a power of two no greater than {MAX_PARTITIONS}"
    );
    let bits = partitions.trailing_zeros();
    if bits == 0 {
        // A shift by 64 would overflow: one partition owns everything.
        return 0;
    }
    (hash >> (64 - bits)) as u32
}

/// The partition that owns `key` among `partitions` equal partitions (a power of two).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    partition_for_hash(key_hash(key), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_vectors() {
        // From the FNV reference test suite (Noll).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fmix64_fixes_zero_and_spreads_neighbours() {
        assert_eq!(fmix64(0), 0);
        assert!((fmix64(1) ^ fmix64(2)).count_ones() > 16);
    }

    /// Pinned outputs: if this test fails, the hash changed and every stored key would move.
    /// Do not update the vectors; restore the hash.
    #[test]
    fn key_hash_is_pinned() {
        let vectors: [(&[u8], u64, u32); 6] = [
            (b"", 0xc220_2437_c725_3b59, 24),
            (b"a", 0x5dfb_fbba_9350_4b78, 11),
            (b"foobar", 0xfd93_2252_6e43_1f44, 31),
            (b"user:42", 0x5d54_e3bc_a590_5b5b, 11),
            (b"n1\x00\x00\x00\x00\x00", 0x421c_416e_bc9a_2e47, 8),
            (&[0xff; 16], 0x0c0e_5e87_03ce_99e8, 1),
        ];
        for (key, hash, partition) in vectors {
            assert_eq!(key_hash(key), hash, "key {key:?}");
            assert_eq!(partition_for_key(key, 32), partition, "key {key:?}");
        }
    }

    #[test]
    fn one_partition_owns_everything_and_top_bits_pick_the_partition() {
        assert_eq!(partition_for_key(b"anything", 1), 0);
        assert_eq!(partition_for_hash(u64::MAX, 32), 31);
        assert_eq!(partition_for_hash(0, 32), 0);
        assert_eq!(partition_for_hash(1 << 59, 32), 1);
        assert_eq!(
            partition_for_hash(u64::MAX, MAX_PARTITIONS),
            MAX_PARTITIONS - 1
        );
    }

    #[test]
    #[should_panic(expected = "must be a power of two")]
    fn a_partition_count_that_is_not_a_power_of_two_is_a_programmer_error() {
        partition_for_key(b"k", 24);
    }

    /// Sequential keys (the worst case for a weak hash) hit every partition about equally.
    #[test]
    fn sequential_keys_hit_partitions_evenly() {
        const KEYS: u32 = 64_000;
        for partitions in [2u32, 8, 32, 256] {
            let mut hits = vec![0u32; partitions as usize];
            for i in 0..KEYS {
                hits[partition_for_key(format!("key{i}").as_bytes(), partitions) as usize] += 1;
            }
            let mean = f64::from(KEYS) / f64::from(partitions);
            for (p, &h) in hits.iter().enumerate() {
                let ratio = f64::from(h) / mean;
                // 256 partitions get 250 keys each: 5 standard deviations is about ±32%.
                assert!(
                    (0.68..=1.32).contains(&ratio),
                    "partition {p} of {partitions} got {h} keys (mean {mean})"
                );
            }
        }
    }

    /// Flipping one input bit flips about half the output bits (the finaliser's purpose).
    #[test]
    fn one_bit_of_key_changes_about_half_the_hash() {
        let mut total_flipped = 0u32;
        let mut samples = 0u32;
        for i in 0..200u32 {
            let key = format!("k{i}").into_bytes();
            for bit in 0..key.len() * 8 {
                let mut other = key.clone();
                other[bit / 8] ^= 1 << (bit % 8);
                total_flipped += (key_hash(&key) ^ key_hash(&other)).count_ones();
                samples += 1;
            }
        }
        let mean = f64::from(total_flipped) / f64::from(samples);
        assert!((30.0..=34.0).contains(&mean), "mean flipped bits {mean}");
    }
}
