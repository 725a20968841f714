//! [`ChunkId`]: the BLAKE3 of a chunk's uncompressed bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Names a chunk by the BLAKE3 hash of its *uncompressed* bytes, so the same data
/// has the same id whatever compression stored it. Shown and serialized as 64
/// lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// The raw 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl From<blake3::Hash> for ChunkId {
    fn from(hash: blake3::Hash) -> ChunkId {
        ChunkId(*hash.as_bytes())
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a chunk id (64 lowercase hex digits): {0:?}")]
pub struct ParseChunkIdError(String);

impl FromStr for ChunkId {
    type Err = ParseChunkIdError;

    /// Accepts exactly 64 lowercase hex digits: a chunk file name has one spelling.
    fn from_str(s: &str) -> Result<ChunkId, ParseChunkIdError> {
        let lowercase_hex =
            s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !lowercase_hex {
            return Err(ParseChunkIdError(s.chars().take(80).collect()));
        }
        blake3::Hash::from_hex(s)
            .map(ChunkId::from)
            .map_err(|_| ParseChunkIdError(s.to_string()))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ChunkId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_serde() {
        let id = ChunkId::of(b"hello");
        assert_eq!(id.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<ChunkId>(&json).unwrap(), id);
    }

    #[test]
    fn refuses_other_spellings() {
        let hex = ChunkId::of(b"x").to_hex();
        assert!(hex.to_uppercase().parse::<ChunkId>().is_err());
        assert!(hex[..63].parse::<ChunkId>().is_err());
        assert!(format!("{hex}0").parse::<ChunkId>().is_err());
        assert!("../../etc/passwd".parse::<ChunkId>().is_err());
        assert!(serde_json::from_str::<ChunkId>("\"zz\"").is_err());
    }
}
