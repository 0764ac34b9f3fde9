//! Every bincode use of the CP engine: log entries, votes, snapshots and Raft RPC payloads.
//! bincode 2.0.1 is unmaintained (RUSTSEC-2025-0141); keeping it in this one file makes a swap to
//! another serde format a one-file change. All encodings use `config::standard()`.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest payload the decoder accepts, so a corrupt length prefix cannot allocate without bound.
pub const MAX_DECODE_BYTES: usize = 256 * 1024 * 1024;

/// Why bytes could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Serialization failed.
    #[error("cannot encode {what}: {message}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// What bincode said.
        message: String,
    },
    /// The bytes are not a valid encoding.
    #[error("cannot decode {what}: {message}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// What bincode said.
        message: String,
    },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Encodes a value; `what` names it in errors.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode {
        what,
        message: e.to_string(),
    })
}

/// Decodes a value that must span all of `bytes`; `what` names it in errors.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError::Decode {
            what,
            message: e.to_string(),
        })?;
    if used != bytes.len() {
        return Err(CodecError::Decode {
            what,
            message: format!("{} trailing bytes", bytes.len() - used),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cp::types::{Entry, Expected, Request};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

    #[test]
    fn openraft_types_round_trip() {
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 2), 17),
            payload: EntryPayload::Normal(Request::Cas {
                keyspace: 1,
                key: b"k".to_vec(),
                expected: Expected::Value(b"v".to_vec()),
                new_value: b"w".to_vec(),
            }),
        };
        let bytes = encode("entry", &entry).unwrap();
        let back: Entry = decode("entry", &bytes).unwrap();
        assert_eq!(back.log_id, entry.log_id);
        assert_eq!(
            format!("{:?}", back.payload),
            format!("{:?}", entry.payload)
        );

        let vote = Vote::<u64>::new_committed(4, 1);
        assert_eq!(
            decode::<Vote<u64>>("vote", &encode("vote", &vote).unwrap()).unwrap(),
            vote
        );
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        let mut bytes = encode("vote", &Vote::<u64>::new(1, 1)).unwrap();
        bytes.push(0);
        assert!(decode::<Vote<u64>>("vote", &bytes).is_err());
        assert!(decode::<Entry>("entry", &[0xff; 3]).is_err());
    }
}
