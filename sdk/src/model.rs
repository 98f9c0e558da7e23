//! Model identifiers.
//!
//! A model is served under a name and a version, but everything that involves money or evidence (prices, receipts,
//! disputes) names it by its [`ModelId`]: the sha256 of the ONNX file's bytes.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// sha256 of a model's ONNX bytes. Displays and parses as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelId([u8; 32]);

impl ModelId {
    /// The id of a model held in memory.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The id of a model file, hashed in streaming fashion (models can be hundreds of MB).
    pub fn of_file(path: &Path) -> Result<Self> {
        let io = |source| Error::Io { path: path.to_owned(), source };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(Self(hasher.finalize().into()))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({self})")
    }
}

impl FromStr for ModelId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let hex_part = s.strip_prefix("0x").unwrap_or(s);
        let mut out = [0u8; 32];
        if hex_part.len() != 64 || hex::decode_to_slice(hex_part, &mut out).is_err() {
            return Err(Error::InvalidModelId(s.to_owned()));
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for ModelId {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<ModelId> for String {
    fn from(id: ModelId) -> Self {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        // sha256("abc"), FIPS 180-2 test vector.
        let id = ModelId::of_bytes(b"abc");
        assert_eq!(id.to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn parse_round_trip_and_prefix() {
        let id = ModelId::of_bytes(b"model");
        assert_eq!(id.to_string().parse::<ModelId>().unwrap(), id);
        assert_eq!(format!("0x{id}").parse::<ModelId>().unwrap(), id);
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"a".repeat(66)] {
            assert!(matches!(bad.parse::<ModelId>(), Err(Error::InvalidModelId(_))), "{bad}");
        }
    }

    #[test]
    fn file_and_bytes_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        assert_eq!(ModelId::of_file(&path).unwrap(), ModelId::of_bytes(&data));
    }

    #[test]
    fn missing_file_is_io_error() {
        assert!(matches!(ModelId::of_file(Path::new("/nonexistent/model.onnx")), Err(Error::Io { .. })));
    }
}
